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
        var runs = new RunCosts();
        Assert.Null(costs.WhyCompute([TierId.Disk, TierId.Disk], 64, 66, 0, runs)); // nothing measured yet: restore, and measure
        // Runs after a past (decoding steps, suffixes): 1 ms + 0.01 ms a token; over an empty past: 1.2 ms + 0.01 ms a token.
        foreach (int tokens in new[] { 1, 1, 1, 16, 16, 2 }) runs.Record(tokens, pastTokens: 100, 1.0 + 0.01 * tokens);
        foreach (int tokens in new[] { 48, 80, 144, 64, 100 }) runs.Record(tokens, pastTokens: 0, 1.2 + 0.01 * tokens);
        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 0.5, placeMs: 0.2); // preparing 0.5 ms, 0.1 ms a chunk from disk

        // One chunk of a 34-token prompt: 0.5 + 0.1 + (1.0 + 0.02) = 1.62 ms against 1.2 + 0.34 = 1.54 ms: computed.
        Assert.Equal((1.62, 1.54), Rounded(costs.Estimate([TierId.Disk], 32, 34, 0, runs)));
        Assert.Contains("would take about 1.62 ms, running the prompt's 34 tokens about 1.54 ms", costs.WhyCompute([TierId.Disk], 32, 34, 0, runs));
        // Eight chunks of a 258-token prompt: 2.32 ms against 3.78 ms: restored.
        Assert.Null(costs.WhyCompute(Enumerable.Repeat(TierId.Disk, 8).ToArray(), 256, 258, 0, runs));
        // What is computed already is not computed again by a miss either: 34 tokens of which 32 are computed.
        Assert.Equal((1.62, 1.02), Rounded(costs.Estimate([TierId.Disk], 32, 34, 32, runs)));
        Assert.Null(costs.WhyCompute([TierId.Remote, TierId.Remote], 64, 66, 0, runs)); // a tier never measured: restore, and measure it

        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 500, placeMs: 500); // one slow restore (the medians hold)
        costs.RecordRestore([TierId.Disk, TierId.Disk], beginMs: 0.5, placeMs: 0.2);
        runs.Record(200, pastTokens: 0, 900); // one slow run (the fit holds)
        Assert.Null(costs.WhyCompute(Enumerable.Repeat(TierId.Disk, 8).ToArray(), 256, 258, 0, runs));
        Assert.NotNull(costs.WhyCompute([TierId.Disk], 32, 34, 0, runs));

        // Two long prompts of nearly one length say nothing of the cost of a token (their difference is noise over 16 tokens):
        // the slope then comes from runs far apart in length (the steps and the prompts together).
        var longRuns = new RunCosts();
        longRuns.Record(4096, pastTokens: 0, 13_000);
        longRuns.Record(4112, pastTokens: 0, 13_190);
        foreach (int tokens in new[] { 1, 1, 16 }) longRuns.Record(tokens, pastTokens: 4096, 40 + 3.2 * tokens);
        Assert.InRange(longRuns.Estimate(4112, afterPast: false)!.Value, 12_000, 14_000);
    }

    private static (double, double) Rounded((double HitMs, double MissMs)? estimate) =>
        (Math.Round(estimate!.Value.HitMs, 3), Math.Round(estimate.Value.MissMs, 3));

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
        Assert.Contains("running the prompt's", computed.Restore.ComputedInstead);
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
