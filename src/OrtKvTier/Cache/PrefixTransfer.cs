using System.Diagnostics;
using OrtKvTier.Diagnostics;
using OrtKvTier.Storage;

namespace OrtKvTier.Cache;

/// <summary>Moves chunks between a <see cref="PrefixCache"/> and past tensors: the restore and capture steps behind every hook.</summary>
internal static unsafe class PrefixTransfer
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
    /// Restores the longest cached chain at the start of <paramref name="tokens"/>, leaving at least
    /// <see cref="MinimumSuffixTokens"/> to run, when it covers more than <paramref name="computedTokens"/>.
    /// <paramref name="preparePast"/>(n) makes the past hold n tokens and returns it; it is not called when nothing is restored.
    /// </summary>
    public static PrefixRestoreReport Restore(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens, Func<int, IKvTensorView> preparePast) =>
        Restore(cache, tokens, computedTokens, preparePast, int.MaxValue);

    private static PrefixRestoreReport Restore(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens, Func<int, IKvTensorView> preparePast, int chunkLimit)
    {
        var found = PlanRestore(cache, tokens, computedTokens, chunkLimit);
        if (found is not { Plan: { } plan, Restored: var restored, LookupMs: var lookupMs })
        {
            if (chunkLimit != int.MaxValue) preparePast(0); // a retry after a failed read: what the first try wrote is gone
            return Missed(found);
        }
        using (plan)
        {
            long start = Stopwatch.GetTimestamp();
            var (past, capacity, chunks) = PreparePast(cache, preparePast, restored);
            int chunkTokens = cache.ChunkTokens;
            var tiers = new string?[chunks];
            void Fill(int j) => tiers[j] = cache.FillChunk(plan, j, Math.Min(chunkTokens, restored - j * chunkTokens), past, capacity);
            if (chunks > 1 && (long)restored * cache.Layout.BytesPerToken >= ParallelCopyBytes) Parallel.For(0, chunks, Fill);
            else for (int j = 0; j < chunks; j++) Fill(j);

            int intact = Array.IndexOf(tiers, null);
            if (intact >= 0) // a chunk was damaged or vanished: restore the chain before it instead
                return Restore(cache, tokens, 0, preparePast, intact);
            return Hit(cache, restored, tiers!, lookupMs, KvCacheMetrics.Milliseconds(start));
        }
    }

    /// <summary>
    /// Like <see cref="Restore(PrefixCache, ReadOnlySpan{int}, int, Func{int, IKvTensorView})"/>, filling the past
    /// tensors one checksum block of every chunk at a time (the blocks of a chunk hold consecutive tensors,
    /// layer by layer) and calling <paramref name="tensorsReady"/>(first, end) as soon as tensors first..end-1
    /// hold all their rows, so the caller can copy them on while later blocks are read. Chunks are verified
    /// at the end; when one fails (damaged, rewritten, vanished) nothing is reported restored and null is
    /// returned: restore again the plain way, which restores the chain before it.
    /// </summary>
    public static PrefixRestoreReport? RestoreInStages(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens, Func<int, IKvTensorView> preparePast,
        Action<int, int> tensorsReady)
    {
        var found = PlanRestore(cache, tokens, computedTokens, int.MaxValue);
        if (found is not { Plan: { } plan, Restored: var restored, LookupMs: var lookupMs }) return Missed(found);
        using (plan)
        {
            long start = Stopwatch.GetTimestamp();
            var layout = cache.ChunkLayout;
            var (past, capacity, chunks) = PreparePast(cache, preparePast, restored);
            int chunkTokens = cache.ChunkTokens;
            var staged = new StagedChunk?[chunks];
            var tiers = new string?[chunks];
            bool allRead = false;
            try
            {
                Parallel.For(0, chunks, j => staged[j] = cache.OpenStaged(plan, j, layout.ScatterToPast(past, capacity, j, Math.Min(chunkTokens, restored - j * chunkTokens))));
                if (Array.IndexOf(staged, null) >= 0) return null; // gone since the lookup: the plain restore takes the chain before it
                int blocks = PayloadChecksum.BlockCount(layout.ChunkBytes), tensors = past.Length, ready = 0;
                long tensorBytes = layout.ChunkBytes / tensors;
                for (int block = 0; block < blocks; block++)
                {
                    Parallel.For(0, chunks, j => staged[j]!.Fill(block, block + 1));
                    int complete = block == blocks - 1 ? tensors : (int)Math.Min(tensors, (block + 1L) * SlotPoolFormat.ChecksumBlockBytes / tensorBytes);
                    if (complete > ready) tensorsReady(ready, complete);
                    ready = Math.Max(ready, complete);
                }
                allRead = true;
            }
            finally
            {
                // Only a chunk read to its last block can be verified; the others are let go without a verdict.
                for (int j = 0; j < chunks; j++) tiers[j] = allRead ? staged[j]!.Finish() : staged[j]?.Abandon();
            }
            return Array.IndexOf(tiers, null) >= 0 ? null : Hit(cache, restored, tiers!, lookupMs, KvCacheMetrics.Milliseconds(start));
        }
    }

    /// <summary>Makes the past hold <paramref name="restored"/> rows, their pages mapped; its tensors' addresses, rows per head, and the chunks to fill.</summary>
    private static (byte*[] Past, int Capacity, int Chunks) PreparePast(PrefixCache cache, Func<int, IKvTensorView> preparePast, int restored)
    {
        var view = preparePast(restored);
        var past = cache.ChunkLayout.Pointers(view);
        cache.ChunkLayout.PopulateRows(past, view.Capacity, restored);
        return (past, view.Capacity, (restored + cache.ChunkTokens - 1) / cache.ChunkTokens);
    }

    /// <summary>What a lookup found: the chain to restore and how many tokens of it (no plan when it covers no more than is computed).</summary>
    private readonly record struct RestorePlan(ChainPlan? Plan, int Restored, double LookupMs);

    /// <summary>Looks the prompt up; null when it is too short to restore anything (no lookup made).</summary>
    private static RestorePlan? PlanRestore(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens, int chunkLimit)
    {
        int chunkTokens = cache.ChunkTokens;
        int usable = tokens.Length - MinimumSuffixTokens;
        if (usable < 1) return null;
        int maxChunks = Math.Min(chunkLimit, (usable + chunkTokens - 1) / chunkTokens);
        var plan = cache.Plan(tokens, maxChunks, minChunks: computedTokens / chunkTokens + 1);
        int restored = Math.Min(plan.Count * chunkTokens, usable);
        double lookupMs = KvCacheMetrics.Milliseconds(plan.StartTimestamp);
        if (restored > computedTokens) return new RestorePlan(plan, restored, lookupMs);
        plan.Dispose();
        return new RestorePlan(null, 0, lookupMs);
    }

    private static PrefixRestoreReport Missed(RestorePlan? lookup)
    {
        if (lookup is not { } made) return PrefixRestoreReport.None();
        KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", "miss"));
        return PrefixRestoreReport.None(made.LookupMs);
    }

    /// <summary>Records a restore of <paramref name="restored"/> tokens whose chunks came from <paramref name="tiers"/> and reports it.</summary>
    internal static PrefixRestoreReport Hit(PrefixCache cache, int restored, string[] tiers, double lookupMs, double restoreMs)
    {
        int chunkTokens = cache.ChunkTokens;
        var byTier = new Dictionary<string, int>();
        for (int j = 0; j < tiers.Length; j++)
            byTier[tiers[j]] = byTier.GetValueOrDefault(tiers[j]) + Math.Min(chunkTokens, restored - j * chunkTokens);
        KvCacheMetrics.Lookups.Add(1, new KeyValuePair<string, object?>("result", "hit"));
        KvCacheMetrics.LookupDuration.Record(lookupMs);
        KvCacheMetrics.RestoredTokens.Add(restored);
        KvCacheMetrics.RestoreDuration.Record(restoreMs);
        return new PrefixRestoreReport { RestoredTokens = restored, ChunkTiers = tiers, LookupMs = lookupMs, RestoreMs = restoreMs, TokensByTier = byTier };
    }

    /// <summary>
    /// Stores every full chunk of the first <paramref name="validTokens"/> of <paramref name="tokens"/>
    /// from chunk <paramref name="firstChunk"/> on that the cache does not hold, copying it out of
    /// <paramref name="view"/>. <paramref name="keys"/> is extended as needed (callers keep it between calls).
    /// Returns the chunks stored.
    /// </summary>
    public static int Capture(PrefixCache cache, ReadOnlySpan<int> tokens, int validTokens, IKvTensorView view, List<ChunkKey> keys, int firstChunk)
    {
        var prefix = tokens[..validTokens];
        cache.Chain.Extend(keys, prefix);
        int chunks = cache.Chain.FullChunks(validTokens);
        if (firstChunk >= chunks) return 0;
        long start = Stopwatch.GetTimestamp();
        var layout = cache.ChunkLayout;
        var past = layout.Pointers(view);
        int capacity = view.Capacity;
        int stored = cache.Store(prefix, keys.GetRange(0, chunks), firstChunk,
            (i, chunk) => layout.CopyFromPast(past, capacity, i, chunk.Pointer));
        if (stored > 0) KvCacheMetrics.CaptureDuration.Record(KvCacheMetrics.Milliseconds(start));
        return stored;
    }
}
