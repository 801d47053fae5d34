using System.Diagnostics;
using OrtKvTier.Diagnostics;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Cache;

/// <summary>Copies computed chunks out of past tensors into a <see cref="PrefixCache"/>: the capture step behind every hook.</summary>
internal static unsafe class ChunkCapture
{
    /// <summary>
    /// Stores every full chunk of the first <paramref name="validTokens"/> of <paramref name="tokens"/>
    /// from chunk <paramref name="firstChunk"/> on that the cache does not hold, copying it out of
    /// <paramref name="view"/>, keyed by <paramref name="chain"/>. <paramref name="keys"/> is extended as needed (callers keep it between calls).
    /// Returns the chunks stored.
    /// </summary>
    public static int Capture(PrefixCache cache, ChunkChain chain, ReadOnlySpan<int> tokens, int validTokens, IKvTensorView view, List<ChunkKey> keys, int firstChunk)
    {
        var prefix = tokens[..validTokens];
        chain.Extend(keys, prefix);
        int chunks = chain.FullChunks(validTokens);
        if (firstChunk >= chunks) return 0;
        using var span = KvCacheMetrics.Activities.StartActivity("ortkv.capture");
        long start = Stopwatch.GetTimestamp();
        var layout = cache.ChunkLayout;
        var past = layout.Pointers(view);
        int capacity = view.Capacity;
        int stored = cache.Store(prefix, keys.GetRange(0, chunks), firstChunk,
            (i, chunk) => layout.CopyFromPast(past, capacity, i, chunk.Pointer));
        if (stored > 0) KvCacheMetrics.CaptureDuration.Record(KvCacheMetrics.Milliseconds(start));
        span?.SetTag("ortkv.stored_chunks", stored);
        return stored;
    }
}
