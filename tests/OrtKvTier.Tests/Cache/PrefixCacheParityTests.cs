using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Cache;

/// <summary>A restored prefix changes nothing: same logits (bitwise on CPU) and tokens as a full prefill.</summary>
public sealed class PrefixCacheParityTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();

    public static TheoryData<string, bool> Models => new()
    {
        { "tiny", false }, { "tiny", true }, { "tiny-fp16", false }, { "tiny-fp16", true },
    };

    [Theory]
    [MemberData(nameof(Models))]
    public void RestoredPrefixGivesTheSameLogitsAndTokensAroundChunkBoundariesInProcessAndAfterRestart(string modelName, bool shared)
    {
        using var model = KvModel.Load(TestPaths.Shipped(modelName), new KvModelOptions { SharedBuffer = shared });
        var cacheDir = _temp.Sub("cache");
        int[] lengths = [Chunk - 1, Chunk, Chunk + 1, 2 * Chunk + 5, 10 * Chunk + 3];
        var prompts = lengths.Select((n, i) => CacheTestKit.Prompt(n, seed: 100 + i)).ToArray();
        var reference = prompts.Select(p => CacheTestKit.Greedy(model, p, cache: null)).ToArray();

        using (var cache = CacheTestKit.Open(model, cacheDir, Chunk))
        {
            for (int i = 0; i < prompts.Length; i++)
            {
                var cold = CacheTestKit.Greedy(model, prompts[i], cache);
                Assert.Equal(0, cold.Restore.RestoredTokens);
                var warm = CacheTestKit.Greedy(model, prompts[i], cache);
                Assert.Equal(Expected(prompts[i].Length), warm.Restore.RestoredTokens);
                Assert.All(warm.Restore.ChunkTiers, t => Assert.Equal("host", t));
                AssertSame(reference[i], warm, $"{modelName} shared={shared} length {prompts[i].Length} (host)");
            }
        }

        using (var reopened = CacheTestKit.Open(model, cacheDir, Chunk))
            for (int i = 0; i < prompts.Length; i++)
            {
                var afterRestart = CacheTestKit.Greedy(model, prompts[i], reopened);
                Assert.Equal(Expected(prompts[i].Length), afterRestart.Restore.RestoredTokens);
                Assert.All(afterRestart.Restore.ChunkTiers, t => Assert.Equal("disk", t));
                AssertSame(reference[i], afterRestart, $"{modelName} shared={shared} length {prompts[i].Length} (disk, after restart)");
            }
    }

    [Fact]
    public void ChunksCapturedInOneKvModeRestoreInTheOther()
    {
        using var growing = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = false });
        using var shared = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = true });
        using var cache = CacheTestKit.Open(growing, directory: null, Chunk);
        var prompt = CacheTestKit.Prompt(5 * Chunk + 2, seed: 7);
        CacheTestKit.Greedy(growing, prompt, cache);
        var restored = CacheTestKit.Greedy(shared, prompt, cache);
        Assert.Equal(5 * Chunk, restored.Restore.RestoredTokens);
        AssertSame(CacheTestKit.Greedy(shared, prompt, cache: null), restored, "growing → shared");
    }

    [Fact]
    public void APromptThatSharesOnlyAPrefixRestoresTheSharedChunksOnly()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var first = CacheTestKit.Prompt(6 * Chunk, seed: 1);
        CacheTestKit.Greedy(model, first, cache);
        var second = first.ToArray();
        second[3 * Chunk + 4] ^= 1; // differs inside chunk 3
        var run = CacheTestKit.Greedy(model, second, cache);
        Assert.Equal(3 * Chunk, run.Restore.RestoredTokens);
        AssertSame(CacheTestKit.Greedy(model, second, cache: null), run, "diverging prompt");
    }

    internal static int Expected(int promptLength) => Math.Max(0, Math.Min(promptLength / Chunk * Chunk, promptLength - 2));

    internal static void AssertSame(GreedyRun expected, GreedyRun actual, string what)
    {
        Assert.True(expected.LogitsBitwiseEqual(actual), $"{what}: logits differ bitwise");
        Assert.Equal(expected.Tokens, actual.Tokens);
    }

    public void Dispose() => _temp.Dispose();
}
