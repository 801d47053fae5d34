namespace OrtKvTier.Quality;

/// <summary>The built-in calibration text of the quality gate: plain English prose on everyday subjects, written for this library.</summary>
internal static class CalibrationText
{
    public const string Default = """
        The morning train to the coast leaves at a quarter past seven, and on most days it is nearly empty. A few students
        sit near the windows with their books open, a man in a grey coat reads yesterday's newspaper, and the conductor
        walks slowly through the carriages, checking tickets and talking about the weather. Outside, the fields change
        colour with the seasons: green and wet in spring, gold in late summer, brown and bare when the first frost comes.

        Cooking a good soup takes less skill than patience. Start with onions, cut small and softened in butter over a low
        flame until they turn sweet and clear. Add carrots, celery and a little garlic, then the stock, and let everything
        simmer for an hour. Taste it often. Salt is added at the end, because the liquid reduces and a soup that tasted
        right at the start will be too salty by the time it is served. A handful of fresh herbs makes the difference.

        When the old library on the hill was finally restored, the town held a small celebration. Children ran between the
        shelves, their parents admired the painted ceiling, and the mayor gave a short speech about reading and memory. The
        building had been closed for eleven years. Water had come through the roof during a storm, and many of the oldest
        books had to be dried one page at a time by volunteers who worked through the winter in rooms without heating.

        A bicycle needs very little care to last for decades. Keep the chain clean and lightly oiled, check the pressure of
        the tyres every week, and make sure the brakes respond firmly before every ride. Most problems begin as a small noise,
        a click or a squeak that grows louder over a few days. Listening to the machine is the best way to understand it,
        and a rider who fixes small things early rarely has to deal with large ones on a dark road far from home.

        Scientists who study birds have found that many species return to the same nesting place every year, sometimes
        after flying thousands of kilometres. They seem to use the position of the sun, the patterns of the stars and even
        the magnetic field of the earth to find their way. Young birds on their first journey often travel with older ones,
        learning the route by following, while others make the trip alone and still arrive within a few days of the rest.

        The meeting started late because nobody could find the key to the room. When it finally began, the discussion went
        in circles for almost an hour: the budget was too small, the deadline too close, and the list of tasks too long. In
        the end a decision was made to do less, but to do it well. Two projects were postponed until next year, and the team
        agreed to meet again on Thursday to review what had been done and to plan the rest of the month in more detail.

        In the mountains the weather changes quickly. A clear blue sky can turn grey within twenty minutes, and a warm
        afternoon can end in hail. Experienced walkers carry an extra layer, water, something to eat and a map, even on short
        routes they know well. They also tell someone where they are going and when they expect to return. Most accidents
        happen on the way down, when people are tired, the light is fading and the path seems easier than it really is.

        Learning a new language as an adult is slow, but it is never too late. The first weeks are full of small victories:
        ordering a coffee, asking for directions, understanding a joke on the radio. Then comes a long middle period where
        progress is hard to see. The secret is to keep going anyway, to read a little every day, to listen to people speak,
        and to accept that mistakes are part of the process rather than a sign of failure. One day the words simply come.

        The garden behind the house was small, but every corner of it was used. Tomatoes grew against the warm wall, beans
        climbed a frame of sticks tied with string, and a row of lettuces filled the narrow bed by the path. In the evening,
        when the heat of the day had passed, the old woman who lived there would water each plant by hand, speaking to them
        quietly, and her neighbours said that this was the reason her vegetables were always the best in the street.
        """;
}
