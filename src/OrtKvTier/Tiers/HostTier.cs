using OrtKvTier.Storage;
using OrtKvTier.Collections;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>
/// Chunks in native host memory under a byte budget, least recently used evicted first. Reads by
/// <see cref="TryRead"/> copy; the prefix cache leases chunks instead and copies them straight
/// into the model's past tensors. Thread-safe.
/// </summary>
internal sealed class HostTier : IKvChunkTier
{
    private readonly object _gate = new();
    private readonly LruMap<ChunkKey, HostChunk> _entries = new();
    private long _bytes;
    private TierCounters _counters;

    /// <summary>Creates an empty tier for chunks of <paramref name="chunkBytes"/> bytes that holds at most <paramref name="budgetBytes"/>.</summary>
    public HostTier(long budgetBytes, long chunkBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkBytes);
        BudgetBytes = budgetBytes;
        ChunkBytes = chunkBytes;
        Buffers = new NativeBufferPool(chunkBytes, KeepIdleBytes);
    }

    /// <inheritdoc />
    public TierId Id => TierId.Host;

    /// <inheritdoc />
    public TierCost Cost => TierCost.LocalIndex;

    /// <summary>Most payload bytes held at once.</summary>
    public long BudgetBytes { get; }

    /// <summary>Bytes of one chunk.</summary>
    public long ChunkBytes { get; }

    /// <summary>Idle chunk buffers kept for reuse, at most.</summary>
    private const long KeepIdleBytes = 64L << 20;

    /// <summary>Where every chunk of this size gets its memory (recycled).</summary>
    internal NativeBufferPool Buffers { get; }

    /// <summary>A new chunk (not held yet) whose bytes the caller fills.</summary>
    internal HostChunk NewChunk(ChunkKey key, ReadOnlySpan<int> tokens) => new(key, tokens, Buffers);

    /// <summary>Called (outside the tier's lock) with each chunk evicted to make room; the chunk is valid during the call.</summary>
    internal Action<HostChunk>? Evicted { get; set; }

    /// <inheritdoc />
    public bool Contains(ChunkKey key)
    {
        lock (_gate) return _entries.ContainsKey(key);
    }

    /// <inheritdoc />
    public bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination)
    {
        RequireChunkSize(destination.Length, nameof(destination));
        if (!TryLease(key, tokens, out var chunk)) return false;
        try
        {
            chunk.Bytes.CopyTo(destination);
            return true;
        }
        finally
        {
            chunk.Release();
        }
    }

    /// <inheritdoc />
    public bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        RequireChunkSize(payload.Length, nameof(payload));
        var chunk = NewChunk(key, tokens);
        payload.CopyTo(chunk.Bytes);
        bool added = Add(chunk);
        chunk.Release();
        return added;
    }

    /// <inheritdoc />
    public bool Remove(ChunkKey key)
    {
        HostChunk? chunk;
        lock (_gate)
        {
            if (!_entries.Remove(key, out chunk)) return false;
            _bytes -= ChunkBytes;
        }
        chunk.Release();
        return true;
    }

    /// <inheritdoc />
    public void Clear()
    {
        List<HostChunk> dropped;
        lock (_gate)
        {
            dropped = _entries.Values();
            _entries.Clear();
            _bytes = 0;
        }
        foreach (var chunk in dropped) chunk.Release();
    }

    /// <inheritdoc />
    public KvTierStats GetStats()
    {
        lock (_gate)
            return _counters.ToStats(Id, _entries.Count, _bytes, BudgetBytes);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Clear();
        Buffers.Dispose();
    }

    /// <summary>A retained reference to the chunk under <paramref name="key"/> if its tokens match (the caller releases it); marks it used.</summary>
    internal bool TryLease(ChunkKey key, ReadOnlySpan<int> tokens, out HostChunk chunk)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(key, out var held) && held.TokensEqual(tokens))
            {
                _entries.Touch(key);
                _counters.Hits++;
                chunk = held.Retain();
                return true;
            }
            _counters.Misses++;
            chunk = null!;
            return false;
        }
    }

    /// <summary>
    /// Holds <paramref name="chunk"/> (taking its own reference), evicting the least recently used
    /// chunks over budget. False when its key is already held or the budget is below one chunk.
    /// </summary>
    internal bool Add(HostChunk chunk)
    {
        RequireChunkSize(chunk.Length, nameof(chunk));
        if (ChunkBytes > BudgetBytes) return false;
        List<HostChunk>? evicted = null;
        lock (_gate)
        {
            if (_entries.ContainsKey(chunk.Key)) return false;
            while (_bytes + ChunkBytes > BudgetBytes && _entries.TryPeekOldest(out var oldestKey, out var oldest))
            {
                _entries.Remove(oldestKey, out _);
                _bytes -= ChunkBytes;
                _counters.Evictions++;
                (evicted ??= []).Add(oldest);
            }
            _entries.Set(chunk.Key, chunk.Retain());
            _bytes += ChunkBytes;
            _counters.Writes++;
        }
        if (evicted is not null)
            foreach (var old in evicted)
            {
                try
                {
                    Evicted?.Invoke(old);
                }
                finally
                {
                    old.Release();
                }
            }
        return true;
    }

    /// <summary>Chunks still waiting for the lower tiers (write-back), retained, their flag cleared; the caller releases them.</summary>
    internal List<HostChunk> TakePendingLowerWrites()
    {
        lock (_gate)
        {
            var pending = _entries.Values().Where(c => c.PendingLowerWrite).ToList();
            foreach (var chunk in pending)
            {
                chunk.PendingLowerWrite = false;
                chunk.Retain();
            }
            return pending;
        }
    }

    private void RequireChunkSize(long length, string name)
    {
        if (length != ChunkBytes)
            throw new ArgumentException($"A host-tier chunk is {ChunkBytes} bytes; got {length}.", name);
    }
}
