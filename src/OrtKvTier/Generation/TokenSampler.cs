namespace OrtKvTier.Generation;

/// <summary>
/// Picks the next token from one row of logits the way GenAI's search does: minimum length and repetition
/// penalty first, then greedy choice (also for <c>top_k = 1</c>) or temperature/top-k/top-p sampling,
/// reproducible from a seed.
/// </summary>
internal sealed class TokenSampler(SearchOptions options, IReadOnlyList<int> eosTokenIds)
{
    private float[] _scores = [];

    private readonly Dictionary<int, int> _generated = [];

    /// <summary>The next token after <paramref name="sequence"/> (prompt and generated tokens) given its <paramref name="logits"/>.</summary>
    public int Next(ReadOnlySpan<float> logits, IReadOnlyList<int> sequence)
    {
        int next = Choose(logits, sequence);
        if (options.PresencePenalty != 0 || options.FrequencyPenalty != 0) _generated[next] = _generated.GetValueOrDefault(next) + 1;
        return next;
    }

    private int Choose(ReadOnlySpan<float> logits, IReadOnlyList<int> sequence)
    {
        if (options.MinLength <= sequence.Count && !options.AdjustsScores) return Next(logits);
        if (_scores.Length != logits.Length) _scores = new float[logits.Length];
        logits.CopyTo(_scores);
        if (sequence.Count < options.MinLength)
            foreach (var eos in eosTokenIds)
                if ((uint)eos < (uint)_scores.Length) _scores[eos] = float.MinValue;
        if (options.RepetitionPenalty != 1.0)
        {
            float penalty = (float)options.RepetitionPenalty;
            foreach (var token in new HashSet<int>(sequence))
                if ((uint)token < (uint)_scores.Length)
                    _scores[token] = _scores[token] < 0 ? _scores[token] * penalty : _scores[token] / penalty;
        }
        // OpenAI's definition: score − count × frequency − (count > 0) × presence, over the tokens generated so far.
        foreach (var (token, count) in _generated)
            if ((uint)token < (uint)_scores.Length)
                _scores[token] -= (float)(count * options.FrequencyPenalty + options.PresencePenalty);
        foreach (var (token, bias) in options.LogitBias ?? new Dictionary<int, double>())
            if ((uint)token < (uint)_scores.Length && _scores[token] != float.MinValue)
                _scores[token] += (float)bias;
        return Next(_scores);
    }

    private ulong _state = options.Seed ?? (ulong)Random.Shared.NextInt64();
    private int[] _order = [];
    private double[] _probabilities = [];

    private int Next(ReadOnlySpan<float> logits)
    {
        if (!options.DoSample || options.TopK == 1) return ArgMax(logits);

        if (_order.Length != logits.Length)
        {
            _order = new int[logits.Length];
            _probabilities = new double[logits.Length];
        }
        for (int i = 0; i < _order.Length; i++) _order[i] = i;
        var keys = logits.ToArray();
        Array.Sort(keys, _order, Comparer<float>.Create((a, b) => b.CompareTo(a)));

        int keep = options.TopK > 0 ? Math.Min(options.TopK, keys.Length) : keys.Length;
        double max = keys[0], sum = 0;
        for (int i = 0; i < keep; i++) sum += _probabilities[i] = Math.Exp((keys[i] - max) / options.Temperature);
        double cumulative = 0;
        int nucleus = keep;
        for (int i = 0; i < keep; i++)
        {
            cumulative += _probabilities[i] / sum;
            if (cumulative >= options.TopP) { nucleus = i + 1; break; }
        }
        double mass = 0;
        for (int i = 0; i < nucleus; i++) mass += _probabilities[i];
        double target = NextUniform() * mass;
        for (int i = 0; i < nucleus; i++)
        {
            target -= _probabilities[i];
            if (target < 0) return _order[i];
        }
        return _order[nucleus - 1];
    }

    internal static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }

    private double NextUniform()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }
}
