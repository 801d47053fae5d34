using OrtKvTier.Keys;

namespace OrtKvTier.Storage;

/// <summary>One indexed chunk: where it lives and which write put it there (what a Put record and a snapshot entry hold).</summary>
internal readonly record struct SlotEntry(ChunkKey Key, int Slot, ulong Generation, int TokenCount, long PayloadLength);

/// <summary>One journal record, decoded; which fields mean something depends on <see cref="Kind"/> (<see cref="StoredFormats.JournalRecordKind"/>).</summary>
internal readonly record struct JournalRecord(StoredFormats.JournalRecordKind Kind, ChunkKey Key, int Slot, ulong Generation, int TokenCount, long PayloadLength, long UnixMs)
{
    /// <summary>The entry a Put record stores.</summary>
    public SlotEntry Entry => new(Key, Slot, Generation, TokenCount, PayloadLength);
}
