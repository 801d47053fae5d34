using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers;
using static OrtKvTier.Tests.Cache.PrefixCacheParityTests;

namespace OrtKvTier.Tests.Cache;

/// <summary>
/// A hit is never slower than a miss: the cache restores a prefix it found only when restoring it is expected to take
/// less than computing it, by costs measured on this machine, and says why when it computes instead. Each test here uses
/// a chunk length no other test uses, so the costs measured for its model identity are its own.
/// </summary>
public sealed class RestoreDecisionTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void TheDecisionComparesMeasuredCostsAndSaysWhy()
    {
        var costs = new RestoreCosts();
        Assert.Null(costs.WhyCompute([TierId.Disk, TierId.Disk], 64)); // nothing measured yet: restore, and measure
        costs.RecordRun(1, 2.0); // a one-token step: a run's fixed cost
        for (int i = 0; i < 3; i++) costs.RecordRun(33, 2.0 + 32 * 0.01); // 0.01 ms for each further token
        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 0.5, placeMs: 0.2); // 0.1 ms a chunk from disk

        Assert.Equal((0.7, 0.64), Rounded(costs.Estimate([TierId.Disk, TierId.Disk], 64)));
        var why = costs.WhyCompute([TierId.Disk, TierId.Disk], 64);
        Assert.Contains("would take about 0.70 ms, computing them about 0.64 ms", why);
        Assert.Null(costs.WhyCompute(Enumerable.Repeat(TierId.Disk, 8).ToArray(), 256)); // 1.3 ms against 2.56
        Assert.Null(costs.WhyCompute([TierId.Remote, TierId.Remote], 64)); // a tier never measured: restore, and measure it

        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 500, placeMs: 500); // one slow restore (the medians hold)
        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 0.5, placeMs: 0.2);
        Assert.Null(costs.WhyCompute(Enumerable.Repeat(TierId.Disk, 8).ToArray(), 256));
    }

    private static (double, double) Rounded((double RestoreMs, double ComputeMs)? estimate) =>
        (Math.Round(estimate!.Value.RestoreMs, 3), Math.Round(estimate.Value.ComputeMs, 3));

    [Fact]
    public void WhenComputingIsCheaperTheCacheComputesGivesTheSameTokensAndSaysWhy()
    {
        const int chunk = 24;
        using var model = KvModel.Load(TestPaths.Tiny);
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = _temp.Sub("cache"), ChunkTokens = chunk, WarmUp = false });
        var prompt = CacheTestKit.Prompt(4 * chunk + 2, seed: 70);
        CacheTestKit.Greedy(model, prompt, cache); // stored; its runs measured what computing costs
        TierId[] fromHost = [TierId.Host, TierId.Host, TierId.Host, TierId.Host];
        for (int i = 0; i < 5; i++) cache.Costs.RecordRestore(fromHost, beginMs: 50, placeMs: 50); // restoring measured slow here

        var computed = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(0, computed.Restore.RestoredTokens);
        Assert.Equal(4 * chunk, computed.Restore.FoundTokens);
        Assert.Contains("computing them about", computed.Restore.ComputedInstead);
        AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), computed, "computed instead of restored");

        for (int i = 0; i < 40; i++) cache.Costs.RecordRestore(fromHost, beginMs: 0.001, placeMs: 0.001); // and now fast
        var restored = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(4 * chunk, restored.Restore.RestoredTokens);
        Assert.Null(restored.Restore.ComputedInstead);
        AssertSame(computed, restored, "restored");
    }

    /// <summary>A restore from disk asks the pool's index once for each chunk it restores, and reads each slot once.</summary>
    [Fact]
    public void ARestoreFromDiskLooksEachChunkUpOnce()
    {
        const int chunk = 20;
        using var model = KvModel.Load(TestPaths.Tiny);
        var options = new PrefixCacheOptions { Directory = _temp.Sub("lookups"), ChunkTokens = chunk, AlwaysRestore = true };
        var prompt = CacheTestKit.Prompt(5 * chunk + 2, seed: 71);
        using (var writer = PrefixCache.Open(model, options)) CacheTestKit.Greedy(model, prompt, writer);
        using var cache = PrefixCache.Open(model, options); // host memory empty: every chunk from disk
        long before = cache.Disk!.Pool.GetStats().IndexLookups;
        using var generator = new KvGenerator(model, cache: cache);
        generator.AppendTokens(prompt);
        Assert.Equal(5 * chunk, generator.LastRestore.RestoredTokens);
        Assert.Equal(["disk"], generator.LastRestore.TokensByTier.Keys);
        Assert.Equal(5, cache.Disk.Pool.GetStats().IndexLookups - before);
    }

    /// <summary>
    /// Closing waits at most CloseTimeout for the chunks queued for the disk; those it could not write are counted and
    /// listed in the warnings, and what the pool holds afterwards plus what was reported adds up to what was captured.
    /// </summary>
    [Fact]
    public void ChunksNotWrittenWhenTheCloseTimeoutPassesAreReportedNeverDroppedSilently()
    {
        const int chunk = 16;
        using var model = KvModel.Load(TestPaths.Tiny);
        using var metrics = new MetricsRecorder();
        var stalled = new FaultPlan();
        var logger = new ListLogger();
        var options = new PrefixCacheOptions
        {
            Directory = _temp.Sub("closing"), ChunkTokens = chunk, CloseTimeout = TimeSpan.Zero, WarmUp = false, Logger = logger,
            DiskMedium = dir =>
            {
                Directory.CreateDirectory(dir);
                return new FaultMedium(new FileMedium(dir), stalled);
            },
        };
        var cache = PrefixCache.Open(model, options);
        stalled.PauseWrites(StoredFormats.DataFileName); // the disk stalls: writes queue up
        int captured;
        using (var generator = new KvGenerator(model, cache: cache))
        {
            generator.AppendTokens(CacheTestKit.Prompt(30 * chunk + 2, seed: 72));
            captured = generator.CaptureToCache();
        }
        Assert.Equal(30, captured);
        var closing = Task.Run(cache.Dispose);
        // Closing gives up on what is queued at once (CloseTimeout 0); the writes in progress finish once the disk does.
        Assert.True(SpinWait.SpinUntil(() => logger.Entries.Any(e => e.Message.Contains("still queued", StringComparison.Ordinal)), TimeSpan.FromSeconds(30)));
        Assert.False(closing.IsCompleted);
        stalled.Resume(StoredFormats.DataFileName);
        Assert.True(closing.Wait(TimeSpan.FromSeconds(60)));

        int stored;
        using (var pool = SlotPool.OpenExisting(Assert.Single(Directory.GetDirectories(options.Directory))))
            stored = pool.GetStats().Entries;
        double notStored = metrics.Sum("ortkv.cache.tier_faults", "cause", "not-stored");
        Assert.InRange(stored, 0, 29);
        Assert.Equal(captured, stored + notStored);
        Assert.Contains(cache.Warnings, w => w.Contains("not written to the lower tiers", StringComparison.Ordinal) && w.Contains("CloseTimeout", StringComparison.Ordinal));
    }

    public void Dispose() => _temp.Dispose();
}
