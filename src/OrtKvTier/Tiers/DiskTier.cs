using Microsoft.Extensions.Logging;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;
using OrtKvTier.Diagnostics;

namespace OrtKvTier.Tiers;

/// <summary>
/// The disk tier: a <see cref="SlotPool"/> in its own directory per model and chunk length. When
/// another process holds the pool's writer lock, this tier opens it read-only (reads hit, writes
/// are skipped). A failing write is logged and reported as not stored; it never fails a request.
/// </summary>
internal sealed class DiskTier : IStagedReadTier
{
    private readonly ILogger? _logger;
    private long _writeFailures;

    private DiskTier(SlotPool pool, ILogger? logger)
    {
        Pool = pool;
        _logger = logger;
        Pool.Dropped += (_, _) => KvCacheMetrics.DamagedChunks.Add(1, KvCacheMetrics.Tier(Id.Name));
    }

    /// <summary>The pool underneath.</summary>
    public SlotPool Pool { get; }

    /// <inheritdoc />
    public TierId Id => TierId.Disk;

    /// <inheritdoc />
    public TierCost Cost => TierCost.LocalIndex;

    /// <summary>Writes that failed (disk full, I/O errors) since open.</summary>
    public long WriteFailures => Interlocked.Read(ref _writeFailures);

    /// <summary>
    /// Opens (or creates) the pool for <paramref name="identity"/> under <paramref name="cacheDirectory"/>,
    /// read-only if another process is writing it.
    /// </summary>
    public static DiskTier Open(string cacheDirectory, SlotPoolIdentity identity, long capacityBytes, Durability durability,
        ILogger? logger = null, MismatchPolicy onMismatch = MismatchPolicy.Recreate)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(cacheDirectory);
        ArgumentNullException.ThrowIfNull(identity);
        var options = new SlotPoolOptions
        {
            Directory = PoolDirectory(cacheDirectory, identity),
            Identity = identity,
            CapacityBytes = Math.Max(capacityBytes, identity.SlotBytes),
            Durability = durability,
            OnMismatch = onMismatch,
            Logger = logger,
        };
        try
        {
            return new DiskTier(SlotPool.Open(options), logger);
        }
        catch (SlotPoolLockedException e)
        {
            logger?.LogInformation("Disk tier {Directory}: {Reason} Opening it read-only: hits are served, new chunks stay in memory.", options.Directory, e.Message);
            return new DiskTier(SlotPool.Open(options with { ReadOnly = true }), logger);
        }
    }

    /// <summary>The pool directory for an identity: <c>CACHE_DIR/&lt;fingerprint&gt;-c&lt;chunk tokens&gt;-&lt;fp16|fp32&gt;</c>.</summary>
    public static string PoolDirectory(string cacheDirectory, SlotPoolIdentity identity) =>
        Path.Combine(cacheDirectory, $"{identity.Fingerprint}-c{identity.ChunkTokens}-{(identity.Shape.ElementName)}");

    /// <inheritdoc />
    public bool Contains(ChunkKey key) => Pool.Contains(key);

    /// <inheritdoc />
    public bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination) =>
        Pool.TryGet(key, tokens, destination, out int length) && length == destination.Length;

    /// <inheritdoc />
    IStagedRead? IStagedReadTier.BeginRead(ChunkKey key, ReadOnlySpan<int> tokens, PayloadScatter scatter) =>
        Pool.BeginRead(key, tokens, scatter) is { } read ? new StagedSlotRead(Pool, read) : null;

    private sealed class StagedSlotRead(SlotPool pool, SlotRead read) : IStagedRead
    {
        public int Blocks => read.Blocks;
        public void ReadBlocks(int firstBlock, int endBlock) => pool.ReadBlocks(read, firstBlock, Math.Min(endBlock, read.Blocks));
        public bool Verify() => pool.EndRead(read);
    }

    /// <inheritdoc />
    public bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        if (Pool.IsReadOnly) return false;
        try
        {
            return Pool.Put(key, tokens, payload);
        }
        catch (IOException e)
        {
            Interlocked.Increment(ref _writeFailures);
            _logger?.LogWarning(e, "Disk tier {Directory}: could not store chunk {Key}; it stays in memory only.", Pool.Directory, key);
            return false;
        }
    }

    /// <inheritdoc />
    public bool Remove(ChunkKey key) => !Pool.IsReadOnly && Pool.Remove(key);

    /// <inheritdoc />
    public void Clear()
    {
        if (!Pool.IsReadOnly) Pool.Clear();
    }

    /// <inheritdoc />
    public void Flush()
    {
        if (!Pool.IsReadOnly) Pool.Flush();
    }

    /// <inheritdoc />
    public KvTierStats GetStats()
    {
        var s = Pool.GetStats();
        return new KvTierStats
        {
            Name = Id.Name, Entries = s.Entries, Bytes = s.PayloadBytes, CapacityBytes = (long)s.SlotCount * Pool.Identity.PayloadBytes,
            Hits = s.Hits, Misses = s.Misses, Writes = s.Puts, Evictions = s.Evictions, ReadOnly = s.ReadOnly,
        };
    }

    /// <inheritdoc />
    public void Dispose() => Pool.Dispose();
}
