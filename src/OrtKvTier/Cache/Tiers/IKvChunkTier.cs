using OrtKvTier.Storage;

namespace OrtKvTier.Cache.Tiers;

/// <summary>
/// One level of the prefix cache (host memory, disk, a device or a remote server). Every entry is
/// one full chunk's KV bytes in the chunk layout (<see cref="ChunkLayout"/>) plus the chunk's
/// token ids. A read returns the stored bytes or reports a miss, never other bytes. Thread-safe.
/// </summary>
public interface IKvChunkTier : IDisposable
{
    /// <summary>Short name used in reports and metric tags: <c>host</c>, <c>disk</c>, ….</summary>
    string Name { get; }

    /// <summary>Whether an entry is held for <paramref name="key"/> (cheap; its bytes are verified only when read).</summary>
    bool Contains(ChunkKey key);

    /// <summary>Copies the chunk stored under <paramref name="key"/> into <paramref name="destination"/> (exactly one chunk's bytes) if its token ids equal <paramref name="tokens"/>.</summary>
    bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination);

    /// <summary>Stores a chunk; false when it was already held or the tier could not take it (it never throws for a full or failing store).</summary>
    bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload);

    /// <summary>Removes an entry; false when there was none.</summary>
    bool Remove(ChunkKey key);

    /// <summary>Counters since the tier was opened.</summary>
    KvTierStats GetStats();
}

/// <summary>A point-in-time view of one tier.</summary>
public sealed record KvTierStats
{
    /// <summary>Tier name.</summary>
    public required string Name { get; init; }
    /// <summary>Chunks held.</summary>
    public required long Entries { get; init; }
    /// <summary>Payload bytes held.</summary>
    public required long Bytes { get; init; }
    /// <summary>Payload bytes the tier may hold.</summary>
    public required long CapacityBytes { get; init; }
    /// <summary>Reads that returned a chunk.</summary>
    public required long Hits { get; init; }
    /// <summary>Reads that found nothing usable (absent, damaged, foreign).</summary>
    public required long Misses { get; init; }
    /// <summary>Chunks stored.</summary>
    public required long Writes { get; init; }
    /// <summary>Chunks evicted to make room.</summary>
    public required long Evictions { get; init; }
    /// <summary>Whether the tier only reads (for example a disk pool whose writer lock another process holds).</summary>
    public bool ReadOnly { get; init; }
}
