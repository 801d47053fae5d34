using OrtKvTier.Collections;
using OrtKvTier.Keys;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>A slot being written by some process (a Reserve record): nobody else takes it until its Put or Release, or until it expires.</summary>
internal readonly record struct SlotReservation(int Slot, ChunkKey Key, ulong Generation, long UnixMs);

/// <summary>
/// The in-memory index: key → slot in recency order (<see cref="LruMap{TKey, TValue}"/>), which slot holds which key,
/// the slots reserved by writers (of any process: what the journal's Reserve records say), and the free slots. It is
/// what replaying the journal builds (<see cref="Apply"/>). Not thread-safe: <see cref="SlotPool"/> guards it with its
/// index lock.
/// </summary>
internal sealed class SlotIndex
{
    private readonly LruMap<ChunkKey, SlotEntry> _entries = new();
    private readonly ChunkKey?[] _bySlot;
    /// <summary>Slots that hold no entry and are not reserved.</summary>
    private readonly SortedSet<int> _free;
    private readonly Dictionary<int, SlotReservation> _reserved = [];
    private readonly Dictionary<ChunkKey, int> _reservedKeys = [];

    public SlotIndex(int slotCount)
    {
        _bySlot = new ChunkKey?[slotCount];
        _free = new SortedSet<int>(Enumerable.Range(0, slotCount));
    }

    public int SlotCount => _bySlot.Length;

    public int Count => _entries.Count;

    public long PayloadBytes { get; private set; }

    public bool TryGet(ChunkKey key, out SlotEntry entry) => _entries.TryGetValue(key, out entry);

    public bool Contains(ChunkKey key) => _entries.ContainsKey(key);

    /// <summary>Whether some writer has reserved a slot for <paramref name="key"/> and not published or released it yet.</summary>
    public bool IsReserved(ChunkKey key) => _reservedKeys.ContainsKey(key);

    /// <summary>The reservation of <paramref name="slot"/>, if any.</summary>
    public SlotReservation? ReservationOf(int slot) => _reserved.TryGetValue(slot, out var r) ? r : null;

    /// <summary>Every reservation not published or released yet.</summary>
    public IReadOnlyCollection<SlotReservation> Reservations => _reserved.Values;

    /// <summary>
    /// Applies one journal record; false when it does not fit this pool (a slot out of range) and changed nothing.
    /// A Put publishes its slot's reservation; a Remove applies only while the index holds that very write (same slot
    /// and generation), so a late removal never takes out a newer entry of the key.
    /// </summary>
    public bool Apply(in JournalRecord record) => record.Kind switch
    {
        JournalRecordKind.Put => Put(record.Entry),
        JournalRecordKind.Remove => RemoveWrite(record.Key, record.Slot, record.Generation),
        JournalRecordKind.Touch => Touched(record.Key),
        JournalRecordKind.Clear => Clear(),
        JournalRecordKind.Reserve => Reserve(new SlotReservation(record.Slot, record.Key, record.Generation, record.UnixMs)),
        JournalRecordKind.Release => Release(record.Slot, record.Generation),
        _ => false,
    };

    /// <summary>Adds or replaces as the most recently used; an entry already in the slot is dropped (the slot was reused) and its reservation published. False for a slot out of range.</summary>
    public bool Put(SlotEntry entry)
    {
        if (!InRange(entry.Slot)) return false;
        Remove(entry.Key);
        if (_bySlot[entry.Slot] is { } occupant) Remove(occupant);
        Unreserve(entry.Slot);
        _entries.Set(entry.Key, entry);
        _bySlot[entry.Slot] = entry.Key;
        _free.Remove(entry.Slot);
        PayloadBytes += entry.PayloadLength;
        return true;
    }

    public bool Remove(ChunkKey key)
    {
        if (!_entries.Remove(key, out var entry)) return false;
        _bySlot[entry.Slot] = null;
        if (!_reserved.ContainsKey(entry.Slot)) _free.Add(entry.Slot);
        PayloadBytes -= entry.PayloadLength;
        return true;
    }

    /// <summary>Removes the entry only if it is still the same write (same key, slot and generation).</summary>
    public bool RemoveIfSame(SlotEntry entry) =>
        TryGet(entry.Key, out var current) && current.Slot == entry.Slot && current.Generation == entry.Generation && Remove(entry.Key);

    public bool Touch(ChunkKey key) => _entries.Touch(key);

    /// <summary>A Remove record: removes the key's entry if it is that write. False only for a slot out of range.</summary>
    private bool RemoveWrite(ChunkKey key, int slot, ulong generation)
    {
        if (!InRange(slot)) return false;
        RemoveIfSame(new SlotEntry(key, slot, generation, 0, 0));
        return true;
    }

    /// <summary>A Touch record (always fits).</summary>
    private bool Touched(ChunkKey key)
    {
        Touch(key);
        return true;
    }

    /// <summary>Marks <paramref name="reservation"/>'s slot as being written (any entry in it is gone: its writer is overwriting it). False for a slot out of range.</summary>
    public bool Reserve(SlotReservation reservation)
    {
        if (!InRange(reservation.Slot)) return false;
        if (_bySlot[reservation.Slot] is { } occupant) Remove(occupant);
        Unreserve(reservation.Slot);
        _reserved[reservation.Slot] = reservation;
        _reservedKeys[reservation.Key] = _reservedKeys.GetValueOrDefault(reservation.Key) + 1;
        _free.Remove(reservation.Slot);
        return true;
    }

    /// <summary>Lets go of <paramref name="slot"/>'s reservation when it is still the one of <paramref name="generation"/>. False for a slot out of range.</summary>
    public bool Release(int slot, ulong generation)
    {
        if (!InRange(slot)) return false;
        if (_reserved.TryGetValue(slot, out var r) && r.Generation == generation)
        {
            Unreserve(slot);
            if (_bySlot[slot] is null) _free.Add(slot);
        }
        return true;
    }

    /// <summary>The lowest slot that holds nothing and is not reserved, or null.</summary>
    public int? FirstFree => _free.Count > 0 ? _free.Min : null;

    /// <summary>A reserved slot whose reservation is older than <paramref name="expiredBeforeUnixMs"/> (its writer died or stalled), or null.</summary>
    public int? FirstExpired(long expiredBeforeUnixMs)
    {
        foreach (var r in _reserved.Values)
            if (r.UnixMs < expiredBeforeUnixMs) return r.Slot;
        return null;
    }

    /// <summary>The least recently used entry, or null.</summary>
    public SlotEntry? Oldest => _entries.TryPeekOldest(out _, out var entry) ? entry : null;

    /// <summary>Removes every entry; slots being written stay reserved. Always true (a Clear record always fits).</summary>
    public bool Clear()
    {
        _entries.Clear();
        Array.Clear(_bySlot);
        _free.Clear();
        _free.UnionWith(Enumerable.Range(0, _bySlot.Length).Where(slot => !_reserved.ContainsKey(slot)));
        PayloadBytes = 0;
        return true;
    }

    /// <summary>Removes every entry and every reservation (a reload).</summary>
    public void Reset()
    {
        _reserved.Clear();
        _reservedKeys.Clear();
        Clear();
    }

    /// <summary>Entries, least recently used first.</summary>
    public List<SlotEntry> Entries() => _entries.Values();

    private bool InRange(int slot) => (uint)slot < (uint)_bySlot.Length;

    private void Unreserve(int slot)
    {
        if (!_reserved.Remove(slot, out var r)) return;
        if (--_reservedKeys[r.Key] == 0) _reservedKeys.Remove(r.Key);
    }
}
