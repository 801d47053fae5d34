using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

/// <summary><c>ortkv rag</c>: documents retrieved by earlier questions, and by an earlier run, come from the cache wherever they stand.</summary>
public sealed class RagCommandTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void ADocumentRetrievedAgainComesFromTheCacheAtItsNewPlaceAndAcrossRuns()
    {
        var documents = _temp.File("documents.txt", string.Join("\n\n",
            "The harbour ferry of Selwick leaves for the islands every morning at nine and only on weekdays in winter when storms are frequent.",
            "Marta keeps four beehives on the roof of her apartment building and gives the honey to neighbours every summer after the harvest.",
            "The chess club meets on Tuesday evenings in the library back room where boards and clocks are provided for every player."));
        var questions = _temp.File("questions.txt", "When does the harbour ferry leave?\nWhere does Marta keep beehives near the harbour?\n");
        // --always-restore: on this tiny model computing a document can be cheaper than reading it, and the cache would compute it.
        JsonElement Run() => JsonDocument.Parse(ChildProcess.Console("rag", "--documents", documents, "--questions-file", questions, "--top", "2",
            "--max-new-tokens", "4", "--cache-dir", _temp.Sub("cache"), "--always-restore", "--json").StdOut).RootElement.GetProperty("answers");

        var first = Run();
        Assert.Equal(2, first.GetArrayLength());
        // Question 1 retrieved the ferry document first and computed it; question 2 retrieved it second: from the cache, moved.
        var ferryFirst = first[0].GetProperty("placed")[0];
        Assert.Equal(0, ferryFirst.GetProperty("cached_tokens").GetInt32());
        var placedAgain = first[1].GetProperty("placed").EnumerateArray().Single(p => p.GetProperty("tokens").GetInt32() == ferryFirst.GetProperty("tokens").GetInt32());
        Assert.True(placedAgain.GetProperty("cached_tokens").GetInt32() > 0);
        Assert.NotEqual(ferryFirst.GetProperty("offset").GetInt32(), placedAgain.GetProperty("offset").GetInt32());
        Assert.Equal(placedAgain.GetProperty("offset").GetInt32(), placedAgain.GetProperty("delta").GetInt32());

        // A new process: every document comes from the disk.
        var second = Run();
        Assert.All(second.EnumerateArray().SelectMany(a => a.GetProperty("placed").EnumerateArray()), p => Assert.True(p.GetProperty("cached_tokens").GetInt32() > 0));
    }

    public void Dispose() => _temp.Dispose();
}
