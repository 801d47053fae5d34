using System.Diagnostics;
using OrtKvTier.Diagnostics;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// The one place that decides where a restore comes from. Handed the tiers it plans over, it finds the longest chain
/// some tier holds (the device tier's prefixes first; then chunk by chunk host memory, the disk, other local tiers; the
/// rest asked of the round-trip tiers in one batch), asks <see cref="RestoreCosts"/> whether restoring it beats computing
/// it, places every chunk through the <see cref="RestoreSink"/> (which alone prepares the past) one seal block of every
/// chunk at a time, and when a chunk fails verification restores the intact chain before it instead.
/// </summary>
/// <remarks>Not <paramref name="observed"/>: no spans and no metrics (the warm-up probe's restores are nobody's requests).
/// <paramref name="alwaysRestore"/>: restores what it finds whatever the costs say.</remarks>
internal sealed unsafe class RestorePlanner(TierStack tiers, LowerTierWriter writes, ChunkLayout layout, RestoreCosts costs, bool observed = true, bool alwaysRestore = false)
{
    /// <summary>Below this many bytes, one thread copies faster than waking the pool.</summary>
    private const long ParallelCopyBytes = 8L << 20;

    /// <summary>
    /// Prompt tokens always left to run after a restore. One would yield logits; two keep them
    /// bitwise equal to a full prefill's, because ONNX Runtime's CPU matmul takes another kernel
    /// (another summation order) for a single row than for several.
    /// </summary>
    public const int MinimumSuffixTokens = 2;

    /// <summary>
    /// Restores the longest cached chain at the start of <paramref name="tokens"/> into <paramref name="sink"/>, leaving at
    /// least <see cref="MinimumSuffixTokens"/> to run, when it covers more than <paramref name="computedTokens"/> and is
    /// worth restoring.
    /// </summary>
    public PrefixRestoreReport Restore(ReadOnlySpan<int> tokens, int computedTokens, ChunkChain chain, RestoreSink sink, DeviceTier? deviceTier = null, RunCosts? runs = null)
    {
        using var span = observed ? KvCacheMetrics.Activities.StartActivity("ortkv.restore") : null;
        span?.SetTag("ortkv.prompt_tokens", tokens.Length);
        var report = RestoreLongest(tokens, computedTokens, chain, sink, deviceTier, runs);
        span?.SetTag("ortkv.restored_tokens", report.RestoredTokens);
        span?.SetTag("ortkv.tiers", string.Join(",", report.TokensByTier.Keys));
        if (report.ComputedInstead is { } why) span?.SetTag("ortkv.computed_instead", why);
        return report;
    }

    private PrefixRestoreReport RestoreLongest(ReadOnlySpan<int> tokens, int computedTokens, ChunkChain chain, RestoreSink sink, DeviceTier? deviceTier, RunCosts? runs)
    {
        if (deviceTier is not null && FromDeviceTier(tokens, computedTokens, chain, sink, deviceTier) is { } fromDevice) return fromDevice;
        int chunkLimit = int.MaxValue;
        while (true)
        {
            // Once the past was prepared, what it held before is gone.
            int computed = sink.Prepared ? 0 : computedTokens;
            using var plan = Lookup(tokens, computed, chunkLimit, chain, sink);
            if (plan is null) return PrefixRestoreReport.None();
            if (plan.Restored <= computed) return NotRestored(plan, sink, reason: null);
            var estimate = runs is null ? null : costs.Estimate(plan.Tiers, plan.Restored, tokens.Length, computed, runs);
            if (!alwaysRestore && costs.WhyCompute(estimate, plan.Tiers, plan.Restored, tokens.Length, computed) is { } reason)
                return NotRestored(plan, sink, reason) with { Estimate = estimate };
            long start = Stopwatch.GetTimestamp();
            int failed = Fill(plan, sink, out double beginMs);
            if (failed < 0)
            {
                sink.Complete();
                double restoreMs = KvCacheMetrics.Milliseconds(start);
                costs.RecordRestore(plan.Tiers, beginMs, restoreMs - beginMs);
                writes.TouchBelowHost([.. plan.Chunks.Select((c, j) => (c, j)).Where(x => x.c.Tier == TierId.Host).Select(x => plan.Keys[x.j])]);
                return Hit(plan, restoreMs) with { Estimate = estimate };
            }
            sink.Abort();
            chunkLimit = failed; // a chunk was damaged or vanished: restore the chain before it
        }
    }

    /// <summary>
    /// Finds the chain: chunk by chunk from the local tiers (host leases, reads begun in place on the disk: one index
    /// lookup each), then the rest asked of the round-trip tiers in one batch per tier (placed in the past as they arrive
    /// when nothing computed is lost). Null when the prompt is too short to restore anything (no lookup made).
    /// </summary>
    private ChainPlan? Lookup(ReadOnlySpan<int> tokens, int computedTokens, int chunkLimit, ChunkChain chain, RestoreSink sink)
    {
        using var span = observed ? KvCacheMetrics.Activities.StartActivity("ortkv.lookup") : null;
        long start = Stopwatch.GetTimestamp();
        int chunkTokens = layout.ChunkTokens;
        int usable = tokens.Length - MinimumSuffixTokens;
        if (usable < 1) return null;
        int chunks = Math.Min(Math.Min(chunkLimit, layout.ChunksOf(usable)), chain.FullChunks(tokens.Length));
        var plan = new ChainPlan(chain.Keys(tokens[..(chunks * chunkTokens)]), tokens[..(chunks * chunkTokens)].ToArray(), chunkTokens, usable, start);
        try
        {
            while (plan.Count < chunks && tiers.LocateLocal(plan.Keys[plan.Count], plan.TokensOf(plan.Count)) is { } found)
            {
                plan.Add(found);
                if (found.Fetched is var (chunk, from)) Keep(chunk, from);
            }
            if (plan.Count < chunks && tiers.RoundTrip.Length > 0) FetchRest(plan, chunks, computedTokens, sink);
        }
        catch
        {
            plan.Dispose();
            throw;
        }
        plan.LookupMs = KvCacheMetrics.Milliseconds(start);
        return plan;
    }

    /// <summary>Asks the round-trip tiers for chunks <c>plan.Count</c>..<paramref name="chunks"/>-1; what comes is kept in host memory (and promoted) and extends the chain up to the first chunk that did not come.</summary>
    private void FetchRest(ChainPlan plan, int chunks, int computedTokens, RestoreSink sink)
    {
        int first = plan.Count;
        var keys = plan.Keys[first..chunks];
        var tokens = Enumerable.Range(first, chunks - first).Select(i => plan.TokensOf(i).ToArray()).ToArray();
        // A host past with nothing computed to lose is prepared when the first chunk arrives, and filled as they arrive.
        var arrival = sink is HostRestoreSink && computedTokens == 0 ? new ArrivalPlacement(sink, Math.Min(chunks * layout.ChunkTokens, plan.Usable)) : null;
        var fetched = tiers.FetchRoundTrip(keys, tokens, arrival is null ? null : (j, chunk) => arrival.Place(first + j, chunk));
        plan.Arrival = arrival;
        for (int j = 0; fetched.TryGetValue(j, out var next); j++) plan.Add(new LocatedChunk(next.Chunk.Retain().Read(), next.Tier.Id));
        foreach (var (chunk, tier) in fetched.Values) Keep(chunk, tier);
    }

    /// <summary>A chunk just read from <paramref name="tier"/> into host memory is kept there and written to the tiers above <paramref name="tier"/>; the caller's reference is let go.</summary>
    private void Keep(HostChunk chunk, IKvChunkTier tier)
    {
        try
        {
            if (tiers.Host.Add(chunk)) writes.PromoteAbove(chunk, tier);
        }
        finally
        {
            chunk.Release();
        }
    }

    /// <summary>
    /// Places every chunk of the plan: one seal block of every chunk at a time (on several threads for large restores),
    /// telling the sink which tensors are complete after each. Returns -1 when every chunk was intact; else the first that
    /// was not (gone, damaged, an I/O error). <paramref name="beginMs"/>: what preparing the destination took.
    /// </summary>
    private int Fill(ChainPlan plan, RestoreSink sink, out double beginMs)
    {
        int rows = plan.Restored, chunks = layout.ChunksOf(rows);
        long start = Stopwatch.GetTimestamp();
        bool arrived = plan.Arrival is { } a && Enumerable.Range(0, chunks).Any(j => a.Holds(j, rows));
        if (!arrived) sink.Begin(rows);
        beginMs = KvCacheMetrics.Milliseconds(start);
        var pending = Enumerable.Range(0, chunks).Where(j => !(arrived && plan.Arrival!.Holds(j, rows))).ToArray();
        var scatters = pending.Select(sink.ScatterFor).ToArray();
        int blocks = PayloadSeal.BlockCount(layout.ChunkBytes), tensors = layout.Layout.Layers * 2, ready = 0;
        long tensorBytes = layout.ChunkBytes / tensors;
        bool parallel = pending.Length > 1 && pending.Length * layout.ChunkBytes >= ParallelCopyBytes;
        for (int block = 0; block < blocks; block++)
        {
            void Place(int p) => plan.Chunks[pending[p]].Read.Place(scatters[p], block, block + 1);
            if (parallel) Parallel.For(0, pending.Length, Place);
            else for (int p = 0; p < pending.Length; p++) Place(p);
            int complete = block == blocks - 1 ? tensors : (int)Math.Min(tensors, (block + 1L) * StoredFormats.SealBlockBytes / tensorBytes);
            if (complete > ready) sink.TensorsReady(ready, complete);
            ready = Math.Max(ready, complete);
        }
        int failed = -1;
        for (int j = 0; j < chunks; j++)
        {
            var chunk = plan.Chunks[j];
            if (chunk.Read.Finish() || (sink is HostRestoreSink && ReplacedFromAnotherTier(plan, j, sink.ScatterFor(j)))) continue;
            if (chunk.Read.Failure is { } e) tiers.Faults.Report(chunk.Tier, "read", $"reading a chunk failed ({e.Message}); such chunks are misses and are computed instead.", e);
            if (failed < 0) failed = j;
        }
        return failed;
    }

    /// <summary>Chunk <paramref name="index"/> failed verification (and was dropped): another lower tier may still hold it. Placed from there into a host past (true), or not found (false).</summary>
    private bool ReplacedFromAnotherTier(ChainPlan plan, int index, PayloadScatter scatter)
    {
        var failed = plan.Chunks[index];
        if (failed.Tier == TierId.Host || tiers.ReadWholeAfter(failed.Tier, plan.Keys[index], plan.TokensOf(index)) is not var (chunk, tier)) return false;
        var read = chunk.Retain().Read();
        read.PlaceAll(scatter);
        read.Finish();
        plan.Replace(index, new LocatedChunk(read, tier.Id));
        Keep(chunk, tier);
        return true;
    }

    /// <summary>
    /// Restores from the device tier, device to device, when it holds at least as long a prefix as the other tiers and
    /// more than is computed; null otherwise.
    /// </summary>
    private PrefixRestoreReport? FromDeviceTier(ReadOnlySpan<int> tokens, int computedTokens, ChunkChain chain, RestoreSink sink, DeviceTier device)
    {
        long start = Stopwatch.GetTimestamp();
        int usable = tokens.Length - MinimumSuffixTokens;
        int chunkTokens = layout.ChunkTokens;
        if (usable <= computedTokens) return null;
        int maxChunks = Math.Min(layout.ChunksOf(usable), chain.FullChunks(tokens.Length));
        var keys = chain.Keys(tokens[..(maxChunks * chunkTokens)]);
        using var hit = device.Find(keys, tokens);
        if (hit is null) return null;
        int restored = Math.Min(hit.Chunks * chunkTokens, usable);
        if (restored <= computedTokens || hit.Chunks < tiers.IndexedChainLength(keys, localOnly: true)) return null;
        double lookupMs = KvCacheMetrics.Milliseconds(start);
        start = Stopwatch.GetTimestamp();
        var past = sink.PreparePast(restored);
        hit.CopyInto(past.Tensors(), past.Capacity, restored);
        double restoreMs = KvCacheMetrics.Milliseconds(start);
        var tierOfChunks = Enumerable.Repeat(TierId.Device, layout.ChunksOf(restored)).ToArray();
        return Report(restored, tierOfChunks, lookupMs, restoreMs);
    }

    /// <summary>A lookup that restores nothing: nothing found, or (<paramref name="reason"/>) computing it is cheaper. A past prepared meanwhile is emptied (what it held is gone).</summary>
    private PrefixRestoreReport NotRestored(ChainPlan plan, RestoreSink sink, string? reason)
    {
        if (sink.Prepared)
        {
            sink.Abort();
            sink.PreparePast(0);
        }
        if (observed) KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", reason is null ? "miss" : "computed"));
        return PrefixRestoreReport.None(plan.LookupMs) with { ComputedInstead = reason, FoundTokens = reason is null ? 0 : plan.Restored };
    }

    private PrefixRestoreReport Hit(ChainPlan plan, double restoreMs)
    {
        var tierOfChunks = plan.Tiers[..layout.ChunksOf(plan.Restored)];
        return Report(plan.Restored, tierOfChunks, plan.LookupMs, restoreMs);
    }

    private void RecordHit(string[] tierOfChunks, IReadOnlyDictionary<string, KvEncoding> encodings, int restored, double lookupMs, double restoreMs)
    {
        foreach (var (tier, encoding) in encodings)
        {
            int chunks = tierOfChunks.Count(t => t == tier);
            long stored = KvCodec.For(encoding, layout.Layout.Shape, layout.ChunkTokens)?.EncodedBytes ?? layout.ChunkBytes;
            KvCacheMetrics.ChunkHits.Add(chunks, KvCacheMetrics.Tier(tier));
            KvCacheMetrics.BytesRead.Add(chunks * stored, KvCacheMetrics.Tier(tier), new KeyValuePair<string, object?>("encoding", encoding.Name()));
        }
        KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", "hit"));
        KvCacheMetrics.LookupDuration.Record(lookupMs);
        KvCacheMetrics.RestoredTokens.Add(restored);
        KvCacheMetrics.RestoreDuration.Record(restoreMs);
    }

    /// <summary>Records a restore of <paramref name="restored"/> tokens whose chunks came from <paramref name="tierOfChunks"/> and reports it.</summary>
    private PrefixRestoreReport Report(int restored, TierId[] tierOfChunks, double lookupMs, double restoreMs)
    {
        var names = Array.ConvertAll(tierOfChunks, t => t.Name);
        var byTier = new Dictionary<string, int>();
        for (int j = 0; j < names.Length; j++) byTier[names[j]] = byTier.GetValueOrDefault(names[j]) + layout.RowsOf(j, restored);
        var encodings = byTier.Keys.ToDictionary(t => t, t => tiers.EncodingOf(new TierId(t)));
        if (observed) RecordHit(names, encodings, restored, lookupMs, restoreMs);
        return new PrefixRestoreReport
        {
            RestoredTokens = restored, FoundTokens = restored, ChunkTiers = names, LookupMs = lookupMs, RestoreMs = restoreMs, TokensByTier = byTier,
            EncodingByTier = encodings.ToDictionary(p => p.Key, p => p.Value.Name()),
        };
    }
}
