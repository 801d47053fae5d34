using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Collections;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>
/// Prefixes kept in device memory (CUDA) under a byte budget, restored device-to-device. An entry is
/// a whole prefix of full chunks as past tensors <c>[1, kvH, chunks × C, D]</c>: a restore is one copy
/// per head and tensor however many chunks it covers, where per-chunk buffers would need one per
/// chunk as well. Any chain that starts an entry's chain hits it (chunk keys are chained, so a key
/// names the whole prefix up to its chunk). Storing a prefix that extends an entry replaces it.
/// The least recently used entries are evicted first, into the host tier (<see cref="Evicted"/>).
/// Thread-safe; a restore keeps its entry alive while it copies.
/// </summary>
internal sealed class DeviceTier : IKvTier
{
    private readonly object _gate = new();
    private readonly KvLayout _layout;
    private readonly OrtAllocator _allocator;
    /// <summary>Every chunk key of every entry, to the entry holding it that was stored or used last.</summary>
    private readonly Dictionary<ChunkKey, DevicePrefix> _byKey = [];
    /// <summary>Every entry under its last chunk key (unique: a prefix is stored once), least recently used first.</summary>
    private readonly LruMap<ChunkKey, DevicePrefix> _recency = new();
    private long _bytes;
    private TierCounters _counters;
    private bool _disposed;

    /// <summary>
    /// A tier for chunks of <paramref name="chunkTokens"/> tokens of <paramref name="layout"/> holding at most
    /// <paramref name="budgetBytes"/>, its tensors from <paramref name="allocator"/> (a CUDA session's device
    /// allocator; host memory works the same, which is how it is tested without a GPU).
    /// </summary>
    public DeviceTier(KvLayout layout, int chunkTokens, long budgetBytes, OrtAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(allocator);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkTokens);
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        _layout = layout;
        _allocator = allocator;
        ChunkTokens = chunkTokens;
        BudgetBytes = budgetBytes;
    }

    /// <inheritdoc />
    public TierId Id => TierId.Device;

    /// <inheritdoc />
    public TierCost Cost => TierCost.LocalIndex;

    /// <summary>Tokens per chunk.</summary>
    public int ChunkTokens { get; }

    /// <summary>Most bytes held at once.</summary>
    public long BudgetBytes { get; }

    /// <summary>
    /// Called (outside the tier's lock, before the tensors are freed) with each entry evicted to make room:
    /// its chunk keys, token ids and tensors (<c>chunks × C</c> rows). The prefix cache copies the chunks the
    /// host tier lacks there.
    /// </summary>
    internal Action<IReadOnlyList<ChunkKey>, int[], OrtValue[]>? Evicted { get; set; }

    /// <summary>
    /// The longest prefix of <paramref name="keys"/> (the chunk keys of <paramref name="tokens"/>) an entry
    /// holds, leased: copy it with <see cref="DeviceHit.CopyInto"/> and dispose the hit. Null when none.
    /// </summary>
    public DeviceHit? Find(IReadOnlyList<ChunkKey> keys, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(keys);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            for (int chunks = keys.Count; chunks > 0; chunks--)
            {
                if (!_byKey.TryGetValue(keys[chunks - 1], out var entry) || !Holds(entry, tokens, chunks * ChunkTokens)) continue;
                Touch(entry);
                entry.Leases++;
                _counters.Hits++;
                return new DeviceHit(this, entry, chunks);
            }
            _counters.Misses++;
            return null;
        }
    }

    /// <summary>
    /// Stores the first <c>keys.Count</c> chunks of <paramref name="tokens"/> from <paramref name="sources"/>
    /// (the past tensors, key 0, value 0, …, <paramref name="sourceCapacity"/> rows per head, in any memory)
    /// as one entry, evicting the least recently used entries over budget. False when an entry already holds
    /// that prefix (it is marked used) or it is larger than the budget.
    /// </summary>
    public bool Store(IReadOnlyList<ChunkKey> keys, ReadOnlySpan<int> tokens, IReadOnlyList<OrtValue> sources, int sourceCapacity)
    {
        ArgumentNullException.ThrowIfNull(keys);
        ArgumentNullException.ThrowIfNull(sources);
        int chunks = keys.Count, rows = chunks * ChunkTokens;
        if (chunks == 0) return false;
        if (tokens.Length < rows) throw new ArgumentException($"{chunks} chunks need {rows} tokens; got {tokens.Length}.", nameof(tokens));
        if (sources.Count != _layout.Layers * 2) throw new ArgumentException($"Expected {_layout.Layers * 2} tensors; got {sources.Count}.", nameof(sources));
        if (sourceCapacity < rows) throw new ArgumentOutOfRangeException(nameof(sourceCapacity), sourceCapacity, $"The past holds fewer than the {rows} rows to store.");
        long bytes = rows * _layout.BytesPerToken;
        if (bytes > BudgetBytes) return false;

        var evicted = new List<DevicePrefix>();
        DevicePrefix? covered = null;
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_byKey.TryGetValue(keys[chunks - 1], out var existing) && Holds(existing, tokens, rows))
            {
                Touch(existing);
                return false;
            }
            // An entry this one extends is covered by it: replace it.
            for (int c = chunks - 1; c > 0 && covered is null; c--)
                if (_byKey.TryGetValue(keys[c - 1], out var shorter) && shorter.Keys.Length == c) covered = shorter;
            if (covered is not null) Unlink(covered);
            while (_bytes + bytes > BudgetBytes && _recency.TryPeekOldest(out _, out var oldest))
            {
                Unlink(oldest);
                _counters.Evictions++;
                evicted.Add(oldest);
            }
            _bytes += bytes; // reserved while the tensors are copied outside the lock
        }

        foreach (var entry in evicted) Retire(entry, intoHost: true);
        if (covered is not null) Retire(covered, intoHost: false);

        OrtValue[] tensors;
        try
        {
            tensors = OrtKvTensors.Allocate(_layout, rows, _allocator).Values;
            KvMemory.CopyRows(_layout, sources, sourceCapacity, tensors, rows, rows);
        }
        catch
        {
            lock (_gate) _bytes -= bytes;
            throw;
        }
        var added = new DevicePrefix(keys.ToArray(), tokens[..rows].ToArray(), tensors, bytes);
        lock (_gate)
        {
            if (_disposed)
            {
                added.Free();
                return false;
            }
            _recency.Set(added.Keys[^1], added);
            foreach (var key in added.Keys) _byKey[key] = added;
            _counters.Writes++;
        }
        return true;
    }

    /// <summary>Entries, bytes and counters now (entries count prefixes; one holds many chunks).</summary>
    public KvTierStats GetStats()
    {
        lock (_gate)
            return _counters.ToStats(Id, _recency.Count, _bytes, BudgetBytes);
    }

    /// <summary>Frees every entry not being copied now (those are freed when their copy ends); nothing goes to the host tier.</summary>
    public void Dispose()
    {
        List<DevicePrefix> entries;
        lock (_gate)
        {
            if (_disposed) return;
            _disposed = true;
            entries = _recency.Values();
            foreach (var entry in entries) Unlink(entry);
        }
        foreach (var entry in entries) Retire(entry, intoHost: false);
    }

    /// <summary>Whether <paramref name="entry"/>'s first <paramref name="rows"/> token ids are those of <paramref name="tokens"/>.</summary>
    private static bool Holds(DevicePrefix entry, ReadOnlySpan<int> tokens, int rows) =>
        tokens.Length >= rows && tokens[..rows].SequenceEqual(entry.Tokens.AsSpan(0, rows));

    private void Touch(DevicePrefix entry)
    {
        _recency.Touch(entry.Keys[^1]);
        foreach (var key in entry.Keys) _byKey[key] = entry;
    }

    /// <summary>Takes an entry out of the index and recency list (under the lock).</summary>
    private void Unlink(DevicePrefix entry)
    {
        _recency.Remove(entry.Keys[^1], out _);
        _bytes -= entry.Bytes;
        foreach (var key in entry.Keys)
            if (_byKey.TryGetValue(key, out var holder) && holder == entry) _byKey.Remove(key);
        entry.Unlinked = true;
    }

    /// <summary>Hands an unlinked entry to <see cref="Evicted"/> if asked, then frees it once no restore copies it.</summary>
    private void Retire(DevicePrefix entry, bool intoHost)
    {
        try
        {
            if (intoHost) Evicted?.Invoke(entry.Keys, entry.Tokens, entry.Tensors);
        }
        finally
        {
            bool free;
            lock (_gate) free = entry.Leases == 0;
            if (free) entry.Free();
        }
    }

    private void Release(DevicePrefix entry)
    {
        bool free;
        lock (_gate) free = --entry.Leases == 0 && entry.Unlinked;
        if (free) entry.Free();
    }

    internal sealed class DevicePrefix(ChunkKey[] keys, int[] tokens, OrtValue[] tensors, long bytes)
    {
        public ChunkKey[] Keys { get; } = keys;
        public int[] Tokens { get; } = tokens;
        public OrtValue[] Tensors { get; } = tensors;
        public long Bytes { get; } = bytes;
        public int Leases { get; set; }
        public bool Unlinked { get; set; }
        private int _freed;

        public void Free()
        {
            if (Interlocked.Exchange(ref _freed, 1) == 1) return;
            foreach (var t in Tensors) t.Dispose();
        }
    }

    /// <summary>A leased device-tier entry covering <see cref="Chunks"/> chunks of a prompt.</summary>
    public sealed class DeviceHit : IDisposable
    {
        private readonly DeviceTier _tier;
        private readonly DevicePrefix _entry;
        private bool _released;

        internal DeviceHit(DeviceTier tier, DevicePrefix entry, int chunks)
        {
            _tier = tier;
            _entry = entry;
            Chunks = chunks;
        }

        /// <summary>Leading chunks of the prompt the entry holds.</summary>
        public int Chunks { get; }

        /// <summary>Copies the first <paramref name="rows"/> token rows (at most <see cref="Chunks"/> × C) into the past tensors (key 0, value 0, …, <paramref name="capacity"/> rows per head).</summary>
        public void CopyInto(IReadOnlyList<OrtValue> targets, int capacity, int rows)
        {
            ObjectDisposedException.ThrowIf(_released, this);
            ArgumentNullException.ThrowIfNull(targets);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(rows, Chunks * _tier.ChunkTokens);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(rows, capacity);
            KvMemory.CopyRows(_tier._layout, _entry.Tensors, _entry.Keys.Length * _tier.ChunkTokens, targets, capacity, rows);
        }

        /// <summary>Ends the lease (an entry evicted meanwhile is freed now).</summary>
        public void Dispose()
        {
            if (_released) return;
            _released = true;
            _tier.Release(_entry);
        }
    }
}
