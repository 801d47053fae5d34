using OrtKvTier.Keys;

namespace OrtKvTier.Storage;

/// <summary>One indexed chunk: where it lives and which write put it there.</summary>
internal readonly record struct SlotEntry(ChunkKey Key, int Slot, ulong Generation, int TokenCount, long PayloadLength);

/// <summary>
/// The in-memory index: key → slot, the free slots, and recency (least recently used first).
/// LRU because a prefix cache's reuse follows recency: system prompts and live conversations are
/// touched on every request, finished conversations and one-off documents age out.
/// Not thread-safe: <see cref="SlotPool"/> guards it with its index lock.
/// </summary>
internal sealed class SlotIndex
{
    private readonly Dictionary<UInt128, LinkedListNode<SlotEntry>> _byKey = [];
    private readonly LinkedList<SlotEntry> _recency = new();
    private readonly LinkedListNode<SlotEntry>?[] _bySlot;
    private readonly SortedSet<int> _free;
    /// <summary>Slots taken by <see cref="TakeFree"/> whose write has not been put or released yet, and their keys.</summary>
    private readonly Dictionary<int, ChunkKey> _writing = [];
    private readonly HashSet<ChunkKey> _writingKeys = [];

    public SlotIndex(int slotCount)
    {
        _bySlot = new LinkedListNode<SlotEntry>?[slotCount];
        _free = new SortedSet<int>(Enumerable.Range(0, slotCount));
    }

    public int Count => _byKey.Count;

    public long PayloadBytes { get; private set; }

    public bool TryGet(ChunkKey key, out SlotEntry entry)
    {
        if (_byKey.TryGetValue(key.Value, out var node))
        {
            entry = node.Value;
            return true;
        }
        entry = default;
        return false;
    }

    public bool Contains(ChunkKey key) => _byKey.ContainsKey(key.Value);

    /// <summary>Adds or replaces; an entry already in the slot is dropped (the slot was reused).</summary>
    public void Put(SlotEntry entry)
    {
        if ((uint)entry.Slot >= (uint)_bySlot.Length) return;
        Remove(entry.Key);
        if (_bySlot[entry.Slot] is { } occupant) Remove(occupant.Value.Key);
        var node = _recency.AddLast(entry);
        _byKey[entry.Key.Value] = node;
        _bySlot[entry.Slot] = node;
        _free.Remove(entry.Slot);
        if (_writing.Remove(entry.Slot, out var writing)) _writingKeys.Remove(writing);
        PayloadBytes += entry.PayloadLength;
    }

    public bool Remove(ChunkKey key)
    {
        if (!_byKey.Remove(key.Value, out var node)) return false;
        _recency.Remove(node);
        _bySlot[node.Value.Slot] = null;
        _free.Add(node.Value.Slot);
        PayloadBytes -= node.Value.PayloadLength;
        return true;
    }

    /// <summary>Removes the entry only if it is still the same write (same slot and generation).</summary>
    public bool RemoveIfSame(SlotEntry entry) =>
        _byKey.TryGetValue(entry.Key.Value, out var node) && node.Value == entry && Remove(entry.Key);

    public void Touch(ChunkKey key)
    {
        if (!_byKey.TryGetValue(key.Value, out var node) || node == _recency.Last) return;
        _recency.Remove(node);
        _recency.AddLast(node);
    }

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

    public SlotEntry? Oldest => _recency.First?.Value;

    public void Clear()
    {
        _byKey.Clear();
        _recency.Clear();
        Array.Clear(_bySlot);
        _free.Clear();
        _free.UnionWith(Enumerable.Range(0, _bySlot.Length).Where(slot => !_writing.ContainsKey(slot)));
        PayloadBytes = 0;
    }

    /// <summary>Entries, least recently used first.</summary>
    public List<SlotEntry> Entries() => [.. _recency];
}
