using System.Diagnostics;
using OrtKvTier.Diagnostics;
using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// The one place that decides where a restore comes from: it finds the longest chain some tier indexes
/// (the device tier's prefixes first, then host memory, the local lower tiers, and the remote ones in one
/// round trip), reads each chunk from the first tier that returns it intact, and when a chunk fails
/// verification restores the intact chain before it instead. How bytes reach the past (straight into host
/// tensors, or staged in pinned memory and copied to the device) is the <see cref="RestoreTarget"/>'s.
/// </summary>
internal sealed unsafe class RestorePlanner(PrefixCache cache)
{
    /// <summary>Below this many bytes, one thread copies faster than waking the pool.</summary>
    private const long ParallelCopyBytes = 8L << 20;

    /// <summary>
    /// Prompt tokens always left to run after a restore. One would yield logits; two keep them
    /// bitwise equal to a full prefill's, because ONNX Runtime's CPU matmul takes another kernel
    /// (another summation order) for a single row than for several.
    /// </summary>
    public const int MinimumSuffixTokens = 2;

    /// <summary>Bytes of one chunk.</summary>
    public long ChunkBytes => cache.ChunkBytes;

    /// <summary>
    /// Restores the longest cached chain at the start of <paramref name="tokens"/>, leaving at least
    /// <see cref="MinimumSuffixTokens"/> to run, when it covers more than <paramref name="computedTokens"/>.
    /// </summary>
    public PrefixRestoreReport Restore(ReadOnlySpan<int> tokens, int computedTokens, RestoreTarget target)
    {
        using var span = KvCacheMetrics.Activities.StartActivity("ortkv.restore");
        span?.SetTag("ortkv.prompt_tokens", tokens.Length);
        var report = RestoreLongest(tokens, computedTokens, target);
        span?.SetTag("ortkv.restored_tokens", report.RestoredTokens);
        span?.SetTag("ortkv.tiers", string.Join(",", report.TokensByTier.Keys));
        return report;
    }

    private PrefixRestoreReport RestoreLongest(ReadOnlySpan<int> tokens, int computedTokens, RestoreTarget target)
    {
        if (target.DeviceTier is { } deviceTier && RestoreFromDeviceTier(tokens, computedTokens, deviceTier, target) is { } fromDevice)
            return fromDevice;
        int chunkLimit = int.MaxValue;
        while (true)
        {
            // Once the past was prepared, what it held before is gone.
            var lookup = Lookup(tokens, target.Prepared ? 0 : computedTokens, chunkLimit, target);
            if (lookup is not { Plan: { } plan, Restored: var restored, LookupMs: var lookupMs })
            {
                if (target.Prepared) target.Prepare(0);
                return Missed(lookup);
            }
            using (plan)
            {
                long start = Stopwatch.GetTimestamp();
                var tiers = target.Device is { } device ? device.Fill(this, plan, restored, target)
                    : FillPast(plan, restored, plan.Arrival is { View: { } arrived } arrival && arrival.Rows == restored ? arrived : target.Prepare(restored));
                int failed = Array.IndexOf(tiers, null);
                if (failed < 0)
                {
                    cache.TouchBelowHost([.. plan.Keys.Where((_, j) => j < tiers.Length && tiers[j] == TierId.Host)]);
                    return Hit(restored, Array.ConvertAll(tiers, t => t!.Value), lookupMs, KvCacheMetrics.Milliseconds(start));
                }
                chunkLimit = failed; // a chunk was damaged or vanished: restore the chain before it
            }
        }
    }

    /// <summary>Fills the past from every chunk of the plan (on several threads for large restores); the tier of each, null where none returned it intact.</summary>
    public TierId?[] FillPast(ChainPlan plan, int restored, IKvTensorView view)
    {
        var tiers = new TierId?[cache.ChunkLayout.ChunksOf(restored)];
        var left = new List<int>();
        for (int j = 0; j < tiers.Length; j++)
            if (plan.Arrival?.Holds(j, restored) == true) tiers[j] = CountHit(plan.From[j]!.Value); // placed as it arrived
            else left.Add(j);
        if (left.Count == 0) return tiers;
        var (past, capacity, _) = Populate(view, restored);
        void Fill(int j) => tiers[j] = FillChunk(plan, j, cache.ChunkLayout.RowsOf(j, restored), past, capacity);
        if (left.Count > 1 && left.Count * cache.ChunkBytes >= ParallelCopyBytes) Parallel.ForEach(left, Fill);
        else left.ForEach(Fill);
        return tiers;
    }

    /// <summary>
    /// Fills the past one checksum block of every chunk at a time (the blocks of a chunk hold consecutive
    /// tensors, layer by layer), calling <paramref name="tensorsReady"/>(first, end) as soon as tensors
    /// first..end-1 hold all their rows. <paramref name="begin"/> runs first (the target is prepared then). Returns the tier of each chunk, null where one was gone or failed verification.
    /// </summary>
    public TierId?[] FillInStages(ChainPlan plan, int restored, IKvTensorView view, Action begin, Action<int, int> tensorsReady)
    {
        var layout = cache.ChunkLayout;
        var (past, capacity, chunks) = Populate(view, restored);
        var staged = new StagedChunk?[chunks];
        var tiers = new TierId?[chunks];
        bool allRead = false;
        int gone = -1;
        try
        {
            begin();
            Parallel.For(0, chunks, j => staged[j] = OpenStaged(plan, j, layout.ScatterToPast(past, capacity, j, layout.RowsOf(j, restored))));
            gone = Array.IndexOf(staged, null);
            if (gone >= 0) return tiers; // vanished since the lookup: nothing was read, the chain before it is intact
            int blocks = PayloadSeal.BlockCount(layout.ChunkBytes), tensors = past.Length, ready = 0;
            long tensorBytes = layout.ChunkBytes / tensors;
            for (int block = 0; block < blocks; block++)
            {
                Parallel.For(0, chunks, j => staged[j]!.Fill(block, block + 1));
                int complete = block == blocks - 1 ? tensors : (int)Math.Min(tensors, (block + 1L) * StoredFormats.SealBlockBytes / tensorBytes);
                if (complete > ready) tensorsReady(ready, complete);
                ready = Math.Max(ready, complete);
            }
            allRead = true;
        }
        finally
        {
            // Only a chunk read to its last block can be verified; the others are let go without a verdict.
            for (int j = 0; j < chunks; j++)
            {
                var tier = allRead ? staged[j]!.Finish() : staged[j]?.Abandon();
                tiers[j] = j < gone ? staged[j]!.From : tier;
            }
        }
        return tiers;
    }

    /// <summary>The view's tensors' addresses with the rows a restore writes backed by pages, their rows per head, and the chunks to fill.</summary>
    private (byte*[] Past, int Capacity, int Chunks) Populate(IKvTensorView view, int restored)
    {
        return (cache.ChunkLayout.PopulatedPointers(view, restored), view.Capacity, cache.ChunkLayout.ChunksOf(restored));
    }

    /// <summary>
    /// Restores from the device tier, device to device, when it holds at least as long a prefix as the
    /// other tiers and more than is computed; null otherwise.
    /// </summary>
    private PrefixRestoreReport? RestoreFromDeviceTier(ReadOnlySpan<int> tokens, int computedTokens, DeviceTier device, RestoreTarget target)
    {
        long start = Stopwatch.GetTimestamp();
        int usable = tokens.Length - MinimumSuffixTokens;
        int chunkTokens = cache.ChunkTokens;
        if (usable <= computedTokens) return null;
        int maxChunks = Math.Min(cache.ChunkLayout.ChunksOf(usable), target.Chain.FullChunks(tokens.Length));
        var keys = target.Chain.Keys(tokens[..(maxChunks * chunkTokens)]);
        using var hit = device.Find(keys, tokens);
        if (hit is null) return null;
        int restored = Math.Min(hit.Chunks * chunkTokens, usable);
        if (restored <= computedTokens || hit.Chunks < cache.IndexedChainLength(keys, localOnly: true)) return null;
        double lookupMs = KvCacheMetrics.Milliseconds(start);
        start = Stopwatch.GetTimestamp();
        var past = target.Prepare(restored);
        hit.CopyInto(past.Tensors(), past.Capacity, restored);
        double restoreMs = KvCacheMetrics.Milliseconds(start);
        var tiers = Enumerable.Repeat(TierId.Device, cache.ChunkLayout.ChunksOf(restored)).ToArray();
        foreach (var tier in tiers) CountHit(tier);
        return Hit(restored, tiers, lookupMs, restoreMs);
    }

    /// <summary>What a lookup found: the chain to restore and how many tokens of it (no plan when it covers no more than is computed).</summary>
    private readonly record struct Found(ChainPlan? Plan, int Restored, double LookupMs);

    /// <summary>Looks the prompt up; null when it is too short to restore anything (no lookup made).</summary>
    private Found? Lookup(ReadOnlySpan<int> tokens, int computedTokens, int chunkLimit, RestoreTarget target)
    {
        using var span = KvCacheMetrics.Activities.StartActivity("ortkv.lookup");
        int chunkTokens = cache.ChunkTokens;
        int usable = tokens.Length - MinimumSuffixTokens;
        if (usable < 1) return null;
        int maxChunks = Math.Min(chunkLimit, cache.ChunkLayout.ChunksOf(usable));
        // A host past with nothing computed to lose is prepared when the first chunk of a round trip arrives, and filled as they arrive.
        Func<int, IKvTensorView>? prepareOnArrival = target.Device is null && computedTokens == 0 ? target.Prepare : null;
        var plan = Plan(tokens, target.Chain, maxChunks, minChunks: computedTokens / chunkTokens + 1, prepareOnArrival, usable);
        int restored = Math.Min(plan.Count * chunkTokens, usable);
        double lookupMs = KvCacheMetrics.Milliseconds(plan.StartTimestamp);
        if (restored > computedTokens) return new Found(plan, restored, lookupMs);
        plan.Dispose();
        return new Found(null, 0, lookupMs);
    }

    /// <summary>
    /// Finds the longest chain of chunks some tier holds at the start of <paramref name="tokens"/>, up to
    /// <paramref name="maxChunks"/>: the run local tiers index (leasing those in host memory; local lower tiers are
    /// read later, straight into the past), extended by what round-trip tiers return when asked for the rest in one
    /// batch (no per-key existence round trips). Fewer than <paramref name="minChunks"/>: an empty plan.
    /// </summary>
    private ChainPlan Plan(ReadOnlySpan<int> tokens, ChunkChain chain, int maxChunks, int minChunks, Func<int, IKvTensorView>? prepareOnArrival, int usable)
    {
        long start = Stopwatch.GetTimestamp();
        int chunkTokens = cache.ChunkTokens;
        int chunks = Math.Min(maxChunks, chain.FullChunks(tokens.Length));
        var keys = chain.Keys(tokens[..(chunks * chunkTokens)]);
        var leased = new HostChunk?[chunks];
        var from = new TierId?[chunks];
        int count = cache.IndexedChainLength(keys, localOnly: true);
        PastOnArrival? arrival = null;
        try
        {
            for (int i = 0; i < count; i++)
                if (cache.Host.TryLease(keys[i], cache.ChunkTokensOf(tokens, i), out var chunk)) (leased[i], from[i]) = (chunk, TierId.Host);
            if (count < chunks && cache.RoundTripTiers.Length > 0)
            {
                if (prepareOnArrival is not null) arrival = new PastOnArrival(cache.ChunkLayout, prepareOnArrival, Math.Min(chunks * chunkTokens, usable));
                count = FetchFromRoundTripTiers(keys, tokens, count, leased, from, arrival);
            }
        }
        catch
        {
            foreach (var chunk in leased) chunk?.Release();
            throw;
        }
        if (count < minChunks) count = 0;
        for (int i = count; i < chunks; i++) leased[i]?.Release();
        return new ChainPlan(keys[..count], tokens[..(count * chunkTokens)].ToArray(), leased[..count], from[..count], start, arrival);
    }

    /// <summary>
    /// Asks the round-trip tiers for chunks <paramref name="first"/>.. (one batch per tier, each tier for what the ones
    /// before it lacked) into host memory, promoted (host at once, the tiers above by the writer threads). Returns where
    /// the chain now ends: the first chunk no tier returned. Each chunk that arrives is placed in <paramref name="arrival"/>'s past at once.
    /// </summary>
    private int FetchFromRoundTripTiers(ChunkKey[] keys, ReadOnlySpan<int> tokens, int first, HostChunk?[] leased, TierId?[] from, PastOnArrival? arrival)
    {
        var missing = Enumerable.Range(first, keys.Length - first).ToList();
        foreach (var tier in cache.RoundTripTiers)
        {
            if (missing.Count == 0) break;
            var chunks = new HostChunk[missing.Count];
            for (int j = 0; j < missing.Count; j++) chunks[j] = cache.Host.NewChunk(keys[missing[j]], cache.ChunkTokensOf(tokens, missing[j]));
            bool[] found;
            try
            {
                var asked = missing;
                found = tier.TryReadMany([.. missing.Select(i => keys[i])], [.. chunks.Select(c => c.Tokens)], [.. chunks.Select(c => c.Memory)],
                    arrival is null ? null : j => arrival.Place(asked[j], chunks[j]));
            }
            catch
            {
                foreach (var c in chunks) c.Release();
                throw;
            }
            var still = new List<int>();
            for (int j = 0; j < missing.Count; j++)
            {
                if (!found[j])
                {
                    chunks[j].Release();
                    still.Add(missing[j]);
                    continue;
                }
                (leased[missing[j]], from[missing[j]]) = (chunks[j], tier.Id);
                if (cache.Host.Add(chunks[j])) cache.PromoteAbove(chunks[j], tier);
            }
            missing = still;
        }
        return missing.Count == 0 ? keys.Length : missing[0];
    }

    /// <summary>
    /// Puts the first <paramref name="tokens"/> rows of plan chunk <paramref name="index"/> into the past
    /// tensors: copied from its host lease, or read and verified straight from the first lower tier that
    /// returns it. Returns the tier, or null when no tier returned it intact.
    /// </summary>
    private TierId? FillChunk(ChainPlan plan, int index, int tokens, byte*[] past, int capacity)
    {
        var scatter = cache.ChunkLayout.ScatterToPast(past, capacity, index, tokens);
        if (OpenStaged(plan, index, scatter) is not { } chunk) return null;
        chunk.Fill(0, PayloadSeal.BlockCount(cache.ChunkBytes));
        if (chunk.Finish() is { } tier) return tier;
        // The staged copy failed verification (and was dropped): another lower tier may still hold the chunk.
        if (ReadWhole(plan.Keys[index], cache.ChunkTokensOf(plan.Tokens, index)) is not var (other, name)) return null;
        try
        {
            scatter.Place(other.Pointer, 0, other.Length);
            return CountHit(name);
        }
        finally
        {
            other.Release();
        }
    }

    /// <summary>
    /// Opens plan chunk <paramref name="index"/> for a restore in stages: its host lease, a verified read begun
    /// in the first lower tier that reads in stages and holds it, or the chunk read whole from another lower tier.
    /// Null when no tier has it.
    /// </summary>
    private StagedChunk? OpenStaged(ChainPlan plan, int index, PayloadScatter scatter)
    {
        if (plan.Leased[index] is { } leased) return new StagedChunk(this, scatter, leased, owned: false, plan.From[index] ?? TierId.Host);
        var key = plan.Keys[index];
        var tokens = cache.ChunkTokensOf(plan.Tokens, index);
        foreach (var tier in cache.LowerTiers)
        {
            if (tier is not IStagedReadTier staged || !staged.Contains(key)) continue;
            try
            {
                if (staged.BeginRead(key, tokens, scatter) is { } read) return new StagedChunk(this, scatter, read, key, tier.Id);
            }
            catch (Exception e) when (e is IOException or InvalidOperationException)
            {
                ReadFailed(e, key, tier.Id);
            }
        }
        return ReadWhole(key, tokens) is var (chunk, from) ? new StagedChunk(this, scatter, chunk, owned: true, from) : null;
    }

    /// <summary>A chunk read whole from the first lower tier that returns it (and promoted), skipping those that read in stages (asked first, in place); null when none does.</summary>
    private (HostChunk Chunk, TierId Tier)? ReadWhole(ChunkKey key, ReadOnlySpan<int> tokens)
    {
        foreach (var tier in cache.LowerTiers)
        {
            if (tier is IStagedReadTier) continue;
            var chunk = cache.Host.NewChunk(key, tokens);
            try
            {
                if (!tier.TryRead(key, tokens, chunk.Bytes)) continue;
                if (cache.Host.Add(chunk)) cache.PromoteAbove(chunk, tier);
                return (chunk.Retain(), tier.Id);
            }
            catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException)
            {
                ReadFailed(e, key, tier.Id);
            }
            finally
            {
                chunk.Release();
            }
        }
        return null;
    }

    public void ReadFailed(Exception e, ChunkKey key, TierId tier) =>
        cache.Faults.Report(tier, "read", $"reading a chunk failed ({e.Message}); such chunks are misses and are computed instead.", e);

    public TierId CountHit(TierId tier)
    {
        KvCacheMetrics.ChunkHits.Add(1, KvCacheMetrics.Tier(tier.Name));
        KvCacheMetrics.BytesRead.Add(cache.ChunkBytes, KvCacheMetrics.Tier(tier.Name));
        return tier;
    }

    private static PrefixRestoreReport Missed(Found? lookup)
    {
        if (lookup is not { } made) return PrefixRestoreReport.None();
        KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", "miss"));
        return PrefixRestoreReport.None(made.LookupMs);
    }

    /// <summary>Records a restore of <paramref name="restored"/> tokens whose chunks came from <paramref name="tiers"/> and reports it.</summary>
    private PrefixRestoreReport Hit(int restored, TierId[] tiers, double lookupMs, double restoreMs)
    {
        var names = Array.ConvertAll(tiers, t => t.Name);
        var byTier = new Dictionary<string, int>();
        for (int j = 0; j < names.Length; j++)
            byTier[names[j]] = byTier.GetValueOrDefault(names[j]) + cache.ChunkLayout.RowsOf(j, restored);
        KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", "hit"));
        KvCacheMetrics.LookupDuration.Record(lookupMs);
        KvCacheMetrics.RestoredTokens.Add(restored);
        KvCacheMetrics.RestoreDuration.Record(restoreMs);
        return new PrefixRestoreReport { RestoredTokens = restored, ChunkTiers = names, LookupMs = lookupMs, RestoreMs = restoreMs, TokensByTier = byTier };
    }
}

/// <summary>
/// The past a restore writes into: <see cref="Prepare"/>(n) makes it hold exactly n rows (written from row
/// 0 next) and returns it. With a <see cref="Device"/> the past is in device memory: chunks are staged in its
/// pinned buffers and copied over; with a <see cref="DeviceTier"/> its prefixes are tried first.
/// </summary>
internal sealed class RestoreTarget(ChunkChain chain, Func<int, IKvTensorView> preparePast, DeviceKvTransfer? device = null, DeviceTier? deviceTier = null)
{
    /// <summary>How the request's keys are made (its tenant's chain).</summary>
    public ChunkChain Chain { get; } = chain;

    public DeviceKvTransfer? Device { get; } = device;
    public DeviceTier? DeviceTier { get; } = deviceTier;

    /// <summary>Whether the past was prepared (its earlier rows are gone).</summary>
    public bool Prepared { get; private set; }

    /// <summary>Milliseconds of the staging-to-device copy left after the last chunk was read (device targets).</summary>
    public double CopyMs { get; set; }

    public IKvTensorView Prepare(int rows)
    {
        Prepared = true;
        return preparePast(rows);
    }
}
