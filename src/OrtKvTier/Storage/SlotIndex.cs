using OrtKvTier.Collections;
using OrtKvTier.Keys;

namespace OrtKvTier.Storage;

/// <summary>One indexed chunk: where it lives and which write put it there.</summary>
internal readonly record struct SlotEntry(ChunkKey Key, int Slot, ulong Generation, int TokenCount, long PayloadLength);

/// <summary>
/// The in-memory index: key → slot in recency order (<see cref="LruMap{TKey, TValue}"/>), which slot holds
/// which key, the free slots, and the slots being written. Not thread-safe: <see cref="SlotPool"/> guards it
/// with its index lock.
/// </summary>
internal sealed class SlotIndex
{
    private readonly LruMap<ChunkKey, SlotEntry> _entries = new();
    private readonly ChunkKey?[] _bySlot;
    private readonly SortedSet<int> _free;
    /// <summary>Slots taken by <see cref="TakeFree"/> whose write has not been put or released yet, and their keys.</summary>
    private readonly Dictionary<int, ChunkKey> _writing = [];
    private readonly HashSet<ChunkKey> _writingKeys = [];

    public SlotIndex(int slotCount)
    {
        _bySlot = new ChunkKey?[slotCount];
        _free = new SortedSet<int>(Enumerable.Range(0, slotCount));
    }

    public int Count => _entries.Count;

    public long PayloadBytes { get; private set; }

    public bool TryGet(ChunkKey key, out SlotEntry entry) => _entries.TryGetValue(key, out entry);

    public bool Contains(ChunkKey key) => _entries.ContainsKey(key);

    /// <summary>Adds or replaces, as the most recently used; an entry already in the slot is dropped (the slot was reused). False for a slot out of range.</summary>
    public bool Put(SlotEntry entry)
    {
        if ((uint)entry.Slot >= (uint)_bySlot.Length) return false;
        Remove(entry.Key);
        if (_bySlot[entry.Slot] is { } occupant) Remove(occupant);
        _entries.Set(entry.Key, entry);
        _bySlot[entry.Slot] = entry.Key;
        _free.Remove(entry.Slot);
        if (_writing.Remove(entry.Slot, out var writing)) _writingKeys.Remove(writing);
        PayloadBytes += entry.PayloadLength;
        return true;
    }

    public bool Remove(ChunkKey key)
    {
        if (!_entries.Remove(key, out var entry)) return false;
        _bySlot[entry.Slot] = null;
        _free.Add(entry.Slot);
        PayloadBytes -= entry.PayloadLength;
        return true;
    }

    /// <summary>Removes the entry only if it is still the same write (same slot and generation).</summary>
    public bool RemoveIfSame(SlotEntry entry) => TryGet(entry.Key, out var current) && current == entry && Remove(entry.Key);

    public void Touch(ChunkKey key) => _entries.Touch(key);

    /// <summary>Takes a free slot for writing <paramref name="key"/> (until <see cref="Put"/> or <see cref="Release"/>), or null when every slot holds an entry or is being written.</summary>
    public int? TakeFree(ChunkKey key)
    {
        if (_free.Count == 0) return null;
        int slot = _free.Min;
        _free.Remove(slot);
        _writing.Add(slot, key);
        _writingKeys.Add(key);
        return slot;
    }

    /// <summary>Whether a put of <paramref name="key"/> is writing its slot now.</summary>
    public bool IsBeingWritten(ChunkKey key) => _writingKeys.Contains(key);

    /// <summary>Marks a slot taken by <see cref="TakeFree"/> as free again (its write failed).</summary>
    public void Release(int slot)
    {
        if (!_writing.Remove(slot, out var key)) return;
        _writingKeys.Remove(key);
        if (_bySlot[slot] is null) _free.Add(slot);
    }

    public SlotEntry? Oldest => _entries.TryPeekOldest(out _, out var entry) ? entry : null;

    public void Clear()
    {
        _entries.Clear();
        Array.Clear(_bySlot);
        _free.Clear();
        _free.UnionWith(Enumerable.Range(0, _bySlot.Length).Where(slot => !_writing.ContainsKey(slot)));
        PayloadBytes = 0;
    }

    /// <summary>Entries, least recently used first.</summary>
    public List<SlotEntry> Entries() => _entries.Values();
}
