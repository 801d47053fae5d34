using Microsoft.Extensions.Logging;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using static OrtKvTier.Tests.Cache.PrefixCacheParityTests;
using OrtKvTier.Keys;

namespace OrtKvTier.Tests.Cache;

/// <summary>What the cache does when entries go missing, get damaged, belong to another model, or a conversation goes on.</summary>
public sealed class PrefixCacheBehaviourTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();

    [Fact]
    public void AnEvictedMiddleChunkLimitsTheRestoreToTheChainBeforeIt()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var cache = CacheTestKit.Open(model, _temp.Sub("cache"), Chunk);
        var prompt = CacheTestKit.Prompt(5 * Chunk + 3, seed: 3);
        CacheTestKit.Greedy(model, prompt, cache);
        cache.Flush();
        var keys = cache.Chain.Keys(prompt);
        Assert.True(cache.Host.Remove(keys[2]));
        Assert.True(cache.Disk!.Remove(keys[2]));

        var run = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(2 * Chunk, run.Restore.RestoredTokens);
        AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), run, "evicted middle chunk");
        // The run recomputed chunk 2 and stored it again: the next request restores everything.
        Assert.Equal(5 * Chunk, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens);
    }

    [Fact]
    public void ADamagedSlotIsAMissThePromptIsPrefilledWithTheSameOutputAndTheDamageIsLoggedAndCounted()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 4);
        ChunkKey damaged;
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
        {
            CacheTestKit.Greedy(model, prompt, cache);
            damaged = cache.Chain.Keys(prompt)[1];
        }
        var logger = new ListLogger();
        using var metrics = new MetricsRecorder();
        using (var reopened = CacheTestKit.Open(model, dir, Chunk, logger: logger))
        {
            CacheTestKit.DamageSlotOf(reopened.Disk!, damaged);
            var run = CacheTestKit.Greedy(model, prompt, reopened);
            Assert.Equal(Chunk, run.Restore.RestoredTokens);
            AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), run, "damaged slot");
        }
        Assert.Contains(logger.Entries, e => e.Level == LogLevel.Warning && e.Message.Contains("tag mismatch", StringComparison.OrdinalIgnoreCase));
        Assert.True(metrics.Sum("ortkv.cache.damaged_chunks", "tier", "disk") >= 1);
    }

    [Fact]
    public void ASecondModelNeverHitsTheFirstModelsEntries()
    {
        var otherFolder = TestPaths.Build(_temp.Sub("other"), ModelShape.Tiny with { Seed = 99 });
        using var first = KvModel.Load(TestPaths.Tiny);
        using var second = KvModel.Load(otherFolder);
        Assert.Equal(first.Layout.ShapeKey, second.Layout.ShapeKey);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(6 * Chunk, seed: 5);
        using (var cache = CacheTestKit.Open(first, dir, Chunk)) CacheTestKit.Greedy(model: first, prompt, cache);

        using var otherCache = CacheTestKit.Open(second, dir, Chunk);
        Assert.Equal(0, otherCache.CachedPrefixLength(prompt));
        var run = CacheTestKit.Greedy(second, prompt, otherCache);
        Assert.Equal(0, run.Restore.RestoredTokens);
        AssertSame(CacheTestKit.Greedy(second, prompt, cache: null), run, "second model");
        Assert.Equal(2, Directory.GetDirectories(dir).Length);
        // Handing one model's cache to the other model's generator is refused.
        using var firstCache = CacheTestKit.Open(first, directory: null, Chunk);
        var e = Assert.Throws<ArgumentException>(() => new KvGenerator(second, cache: firstCache));
        Assert.Contains(second.Fingerprint.ToString(), e.Message);
    }

    [Fact]
    public void AMultiTurnConversationReusesThePreviousTurn()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var tokenizer = new ModelTokenizer(model.Folder);
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var generator = new TextGenerator(model, tokenizer, cache);
        var history = CacheTestKit.Prompt(40, seed: 6).ToList();
        var greedy = SearchOptions.FromConfig(model) with { DoSample = false };
        for (int turn = 0; turn < 4; turn++)
        {
            var result = generator.Generate(history.ToArray(), 12, greedy);
            var reference = new TextGenerator(model, tokenizer).Generate(history.ToArray(), 12, greedy);
            Assert.Equal(reference.Tokens, result.Tokens);
            if (turn > 0) Assert.True(result.CachedTokens >= previousComputed / Chunk * Chunk,
                $"turn {turn}: restored {result.CachedTokens} of {history.Count}; the previous turn computed {previousComputed}");
            Assert.Equal(history.Count - result.CachedTokens, result.PrefillTokens);
            history.AddRange(result.Tokens);
            previousComputed = history.Count - 1;
            history.AddRange(CacheTestKit.Prompt(9, seed: 60 + turn)); // the user's next message
        }
    }

    private int previousComputed;

    [Fact]
    public void HostTierEvictsByRecencyUnderItsBudgetAndTheDiskStillServes()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        long chunkBytes = (long)model.Layout.BytesPerToken * Chunk;
        using var cache = CacheTestKit.Open(model, _temp.Sub("cache"), Chunk, hostBytes: 3 * chunkBytes);
        var prompt = CacheTestKit.Prompt(6 * Chunk + 2, seed: 8);
        CacheTestKit.Greedy(model, prompt, cache);
        cache.Flush();
        var host = cache.Host.GetStats();
        Assert.Equal(3, host.Entries);
        Assert.True(host.Evictions >= 3);
        Assert.True(host.Bytes <= 3 * chunkBytes);
        var run = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(6 * Chunk, run.Restore.RestoredTokens);
        Assert.Contains("disk", run.Restore.ChunkTiers);
        AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), run, "host budget");
    }

    [Fact]
    public void WriteBackReachesDiskOnFlushAndSurvivesARestart()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(3 * Chunk + 2, seed: 9);
        using (var cache = CacheTestKit.Open(model, dir, Chunk, writes: LowerTierWrites.WriteBack))
        {
            CacheTestKit.Greedy(model, prompt, cache);
            Assert.Equal(0, cache.Disk!.GetStats().Entries);
            cache.Flush();
            Assert.Equal(3, cache.Disk.GetStats().Entries);
        }
        using var reopened = CacheTestKit.Open(model, dir, Chunk);
        Assert.Equal(3 * Chunk, CacheTestKit.Greedy(model, prompt, reopened).Restore.RestoredTokens);
    }

    [Fact]
    public void TwoCachesOnTheSameDirectoryBothStoreAndEachRestoresTheOthersPrefix()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        using var first = CacheTestKit.Open(model, dir, Chunk);
        using var second = CacheTestKit.Open(model, dir, Chunk);
        Assert.False(first.Disk!.GetStats().ReadOnly);
        Assert.False(second.Disk!.GetStats().ReadOnly);
        var a = CacheTestKit.Prompt(4 * Chunk + 2, seed: 10);
        var b = CacheTestKit.Prompt(3 * Chunk + 2, seed: 20);
        CacheTestKit.Greedy(model, a, first);
        CacheTestKit.Greedy(model, b, second);
        first.Flush();
        second.Flush();
        var fromFirst = CacheTestKit.Greedy(model, a, second);
        Assert.Equal(4 * Chunk, fromFirst.Restore.RestoredTokens);
        Assert.All(fromFirst.Restore.ChunkTiers, t => Assert.Equal("disk", t));
        var fromSecond = CacheTestKit.Greedy(model, b, first);
        Assert.Equal(3 * Chunk, fromSecond.Restore.RestoredTokens);
        Assert.All(fromSecond.Restore.ChunkTiers, t => Assert.Equal("disk", t));
    }

    [Fact]
    public void ConcurrentGeneratorsOnOneCacheProduceWhatEachProducesAlone()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        long chunkBytes = (long)model.Layout.BytesPerToken * Chunk;
        using var cache = CacheTestKit.Open(model, _temp.Sub("cache"), Chunk, hostBytes: 8 * chunkBytes);
        var shared = CacheTestKit.Prompt(3 * Chunk, seed: 11);
        var prompts = Enumerable.Range(0, 8).Select(i => shared.Concat(CacheTestKit.Prompt(Chunk * (i % 3) + 5, seed: 20 + i)).ToArray()).ToArray();
        var alone = prompts.Select(p => CacheTestKit.Greedy(model, p, cache: null)).ToArray();
        for (int round = 0; round < 3; round++)
        {
            var together = new GreedyRun[prompts.Length];
            Parallel.For(0, prompts.Length, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i => together[i] = CacheTestKit.Greedy(model, prompts[i], cache));
            for (int i = 0; i < prompts.Length; i++) AssertSame(alone[i], together[i], $"round {round} prompt {i}");
        }
        Assert.True(cache.Host.GetStats().Bytes <= 8 * chunkBytes);
    }

    [Fact]
    public void MetricsCountLookupsHitsAndRestoredTokensByTier()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var metrics = new MetricsRecorder();
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 12);
        CacheTestKit.Greedy(model, prompt, cache);
        CacheTestKit.Greedy(model, prompt, cache);
        Assert.True(metrics.Sum("ortkv.cache.chunk_hits", "tier", "host") >= 4);
        Assert.True(metrics.Sum("ortkv.cache.restored_tokens") >= 4 * Chunk);
        Assert.True(metrics.Sum("ortkv.cache.lookups", "result", "hit") >= 1);
        Assert.True(metrics.Sum("ortkv.cache.restore.duration") >= 1);
        Assert.True(metrics.Sum("ortkv.cache.bytes_written", "tier", "host") >= 4 * cache.ChunkBytes);
    }

    public void Dispose() => _temp.Dispose();
}
