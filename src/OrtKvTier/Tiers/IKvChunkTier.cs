using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>Which level of the cache a tier is; also its name in reports and metric tags (<c>device</c>, <c>host</c>, <c>disk</c>, <c>remote</c>).</summary>
public readonly record struct TierId(string Name)
{
    /// <summary>Prefixes in device memory.</summary>
    public static readonly TierId Device = new("device");
    /// <summary>Chunks in host memory.</summary>
    public static readonly TierId Host = new("host");
    /// <summary>The slot pool on a local disk.</summary>
    public static readonly TierId Disk = new("disk");
    /// <summary>A server shared by a fleet.</summary>
    public static readonly TierId Remote = new("remote");

    /// <inheritdoc />
    public override string ToString() => Name;
}

/// <summary>What asking a tier costs: the cache asks cheap tiers one key at a time and batches the others.</summary>
public enum TierCost
{
    /// <summary>An in-process index answers (device, host, disk): ask freely, key by key.</summary>
    LocalIndex,
    /// <summary>Every call is a network round trip (remote): ask once for many keys.</summary>
    NetworkRoundTrip,
}

/// <summary>What every tier says about itself: its id, what a call costs, and its counters.</summary>
public interface IKvTier : IDisposable
{
    /// <summary>Which tier this is.</summary>
    TierId Id { get; }

    /// <summary>What a <see cref="IKvChunkTier.Contains"/> or read costs.</summary>
    TierCost Cost { get; }

    /// <summary>Counters since the tier was opened.</summary>
    KvTierStats GetStats();
}

/// <summary>
/// One level of the prefix cache that holds chunks as bytes (host memory, disk, a remote server). Every
/// entry is one full chunk's KV bytes in the chunk layout (<see cref="ChunkLayout"/>) plus the chunk's
/// token ids. A read returns the stored bytes or reports a miss, never other bytes. Thread-safe.
/// </summary>
public interface IKvChunkTier : IKvTier
{
    /// <summary>Whether an entry is held for <paramref name="key"/> (its bytes are verified only when read).</summary>
    bool Contains(ChunkKey key);

    /// <summary>How the tier stores a chunk's KV (reads always give the chunk layout's bytes, decoded). Default exact.</summary>
    KvEncoding Encoding => KvEncoding.Exact;

    /// <summary>Copies the chunk stored under <paramref name="key"/> into <paramref name="destination"/> (exactly one chunk's bytes) if its token ids equal <paramref name="tokens"/>.</summary>
    bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination);

    /// <summary>
    /// Reads several chunks into <paramref name="destinations"/>; true where one came back intact. Tiers whose
    /// <see cref="IKvTier.Cost"/> is a round trip do it in one. <paramref name="arrived"/>(i), when given, is called
    /// (from any thread, before this returns) as soon as destination i holds its intact chunk, so the caller can use it
    /// while the others are still coming.
    /// </summary>
    bool[] TryReadMany(IReadOnlyList<ChunkKey> keys, IReadOnlyList<int[]> tokens, IReadOnlyList<Memory<byte>> destinations, Action<int>? arrived = null)
    {
        var found = new bool[keys.Count];
        for (int i = 0; i < keys.Count; i++)
            if (found[i] = TryRead(keys[i], tokens[i], destinations[i].Span)) arrived?.Invoke(i);
        return found;
    }

    /// <summary>Stores a chunk; false when it was already held or the tier could not take it (it never throws for a full or failing store).</summary>
    bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload);

    /// <summary>Removes an entry; false when there was none.</summary>
    bool Remove(ChunkKey key);

    /// <summary>The cache's secret, for a tier that authenticates entries and was given no key of its own.</summary>
    internal void UseCacheSecret(Security.CacheSecret secret) { }

    /// <summary>The model missed the quality gate of <see cref="Encoding"/>: store and read exact chunks instead (called before the tier's first use).</summary>
    internal void FallBackToExact() { }

    /// <summary>Drops every entry this process may drop (a tier shared by a fleet keeps its entries).</summary>
    void Clear() { }

    /// <summary>Makes written chunks durable now (a no-op where that means nothing).</summary>
    void Flush() { }

    /// <summary>Marks entries used (a hit served from a tier above): eviction follows use across tiers. A no-op where recency is not kept.</summary>
    void Touch(IReadOnlyList<ChunkKey> keys) { }
}

/// <summary>
/// A local tier whose reads go straight to their destination (the past tensors, pinned staging) one seal block at a
/// time and are verified at the end (the disk), so a restore never copies its bytes twice.
/// </summary>
internal interface IInPlaceReadTier : IKvChunkTier
{
    /// <summary>
    /// The chunk under <paramref name="key"/> (one index lookup), its header checked against <paramref name="tokens"/>,
    /// ready to be placed; null on a miss. A read that throws is the tier's fault to report; the caller sees a miss.
    /// </summary>
    ChunkRead? BeginRead(ChunkKey key, ReadOnlySpan<int> tokens);
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

/// <summary>The counters a memory tier keeps under its own lock.</summary>
internal struct TierCounters
{
    public long Hits, Misses, Writes, Evictions;

    public readonly KvTierStats ToStats(TierId id, long entries, long bytes, long capacityBytes) => new()
    {
        Name = id.Name, Entries = entries, Bytes = bytes, CapacityBytes = capacityBytes,
        Hits = Hits, Misses = Misses, Writes = Writes, Evictions = Evictions,
    };
}
