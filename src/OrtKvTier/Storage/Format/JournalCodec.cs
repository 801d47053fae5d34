using System.Buffers.Binary;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// Encodes and decodes the index journal (a header, then append-only records, each with a MAC under the cache's secret)
/// and the snapshot it is compacted into. A journal belongs to one pool (pool id) and one snapshot epoch; a reader
/// decodes records up to the first one that is torn or fails its MAC (a forged record ends the replay there). Bytes
/// only: what a record does to the index is the index's business.
/// </summary>
internal sealed class JournalCodec(CacheSecret secret)
{
    /// <summary>The header of a fresh journal.</summary>
    public byte[] Header(ulong poolId, long epoch)
    {
        var header = new byte[JournalHeaderBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(JhMagic), JournalMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(header.AsSpan(JhVersion), FormatVersion);
        BinaryPrimitives.WriteUInt64LittleEndian(header.AsSpan(JhPoolId), poolId);
        BinaryPrimitives.WriteInt64LittleEndian(header.AsSpan(JhEpoch), epoch);
        WriteUInt128(header.AsSpan(JhMac), secret.Mac(header.AsSpan(0, JhMac)));
        return header;
    }

    /// <summary>The pool id an authentic journal header of this format names, or null.</summary>
    public ulong? ReadPoolId(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length < JournalHeaderBytes || BinaryPrimitives.ReadUInt64LittleEndian(bytes[JhMagic..]) != JournalMagic) return null;
        if (ReadUInt128(bytes[JhMac..]) != secret.Mac(bytes[..JhMac]) || BinaryPrimitives.ReadUInt32LittleEndian(bytes[JhVersion..]) != FormatVersion) return null;
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes[JhPoolId..]);
    }

    /// <summary>The journal's epoch, or null when the header is missing, damaged, of another version or another pool's.</summary>
    public long? ReadEpoch(ReadOnlySpan<byte> bytes, ulong poolId)
    {
        if (bytes.Length < JournalHeaderBytes) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[JhMagic..]) != JournalMagic) return null;
        if (ReadUInt128(bytes[JhMac..]) != secret.Mac(bytes[..JhMac])) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes[JhVersion..]) != FormatVersion) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[JhPoolId..]) != poolId) return null;
        return BinaryPrimitives.ReadInt64LittleEndian(bytes[JhEpoch..]);
    }

    /// <summary>
    /// Decodes the complete, authentic records of <paramref name="bytes"/> (which start at journal offset
    /// <paramref name="offset"/>) and hands each to <paramref name="apply"/>, up to the first one that is torn or fails
    /// its MAC. A record whose body does not fit its kind (unknown kind, wrong length), or that <paramref name="apply"/>
    /// says does not fit (a slot out of range), is skipped. Returns where the valid records end (a journal offset), how
    /// many were applied and how many skipped.
    /// </summary>
    public (long ValidEnd, int Records, int Skipped) Read(ReadOnlySpan<byte> bytes, long offset, Func<JournalRecord, bool> apply)
    {
        int records = 0, skipped = 0, pos = 0;
        while (pos + RecordOverhead <= bytes.Length)
        {
            int bodyLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes[pos..]);
            int total = RecordOverhead + bodyLength;
            if (pos + total > bytes.Length) break;
            var record = bytes.Slice(pos, total);
            if (ReadUInt128(record[^MacBytes..]) != secret.Mac(record[..^MacBytes])) break;
            if (Decode((JournalRecordKind)record[2], record.Slice(3, bodyLength)) is { } decoded && apply(decoded)) records++;
            else skipped++;
            pos += total;
        }
        return (offset + pos, records, skipped);
    }

    public byte[] Put(SlotEntry entry)
    {
        Span<byte> body = stackalloc byte[EntryBytes];
        WriteEntry(body, entry);
        return Record(JournalRecordKind.Put, body);
    }

    public byte[] Remove(SlotEntry entry)
    {
        Span<byte> body = stackalloc byte[RemoveBodyBytes];
        WriteUInt128(body, entry.Key.Value);
        BinaryPrimitives.WriteInt32LittleEndian(body[EnSlot..], entry.Slot);
        BinaryPrimitives.WriteUInt64LittleEndian(body[EnGeneration..], entry.Generation);
        return Record(JournalRecordKind.Remove, body);
    }

    public byte[] Touch(ChunkKey key)
    {
        Span<byte> body = stackalloc byte[KeyBodyBytes];
        WriteUInt128(body, key.Value);
        return Record(JournalRecordKind.Touch, body);
    }

    public byte[] Clear() => Record(JournalRecordKind.Clear, []);

    public byte[] Reserve(ChunkKey key, int slot, ulong generation, long unixMs)
    {
        Span<byte> body = stackalloc byte[ReserveBodyBytes];
        WriteUInt128(body, key.Value);
        BinaryPrimitives.WriteInt32LittleEndian(body[EnSlot..], slot);
        BinaryPrimitives.WriteUInt64LittleEndian(body[EnGeneration..], generation);
        BinaryPrimitives.WriteInt64LittleEndian(body[RsUnixMs..], unixMs);
        return Record(JournalRecordKind.Reserve, body);
    }

    public byte[] Release(int slot, ulong generation)
    {
        Span<byte> body = stackalloc byte[ReleaseBodyBytes];
        BinaryPrimitives.WriteInt32LittleEndian(body[RlSlot..], slot);
        BinaryPrimitives.WriteUInt64LittleEndian(body[RlGeneration..], generation);
        return Record(JournalRecordKind.Release, body);
    }

    /// <summary>The snapshot of <paramref name="entries"/> (least recently used first).</summary>
    public byte[] Snapshot(ulong poolId, long epoch, IReadOnlyList<SlotEntry> entries)
    {
        var bytes = new byte[SnapshotHeaderBytes + entries.Count * EntryBytes + MacBytes];
        var span = bytes.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(span[SnMagic..], SnapshotMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(span[SnVersion..], FormatVersion);
        BinaryPrimitives.WriteInt32LittleEndian(span[SnCount..], entries.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(span[SnPoolId..], poolId);
        BinaryPrimitives.WriteInt64LittleEndian(span[SnEpoch..], epoch);
        for (int i = 0; i < entries.Count; i++) WriteEntry(span.Slice(SnapshotHeaderBytes + i * EntryBytes), entries[i]);
        WriteUInt128(span[^MacBytes..], secret.Mac(span[..^MacBytes]));
        return bytes;
    }

    /// <summary>A snapshot's epoch and entries (least recently used first), or null when it is damaged, of another version or another pool's.</summary>
    public (long Epoch, List<SlotEntry> Entries)? ReadSnapshot(ReadOnlySpan<byte> bytes, ulong poolId)
    {
        if (bytes.Length < SnapshotHeaderBytes + MacBytes) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[SnMagic..]) != SnapshotMagic) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes[SnVersion..]) != FormatVersion) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[SnPoolId..]) != poolId) return null;
        int count = BinaryPrimitives.ReadInt32LittleEndian(bytes[SnCount..]);
        if (count < 0 || bytes.Length != SnapshotHeaderBytes + (long)count * EntryBytes + MacBytes) return null;
        if (ReadUInt128(bytes[^MacBytes..]) != secret.Mac(bytes[..^MacBytes])) return null;
        var entries = new List<SlotEntry>(count);
        for (int i = 0; i < count; i++) entries.Add(ReadEntry(bytes.Slice(SnapshotHeaderBytes + i * EntryBytes)));
        return (BinaryPrimitives.ReadInt64LittleEndian(bytes[SnEpoch..]), entries);
    }

    /// <summary>The record, or null when its body does not fit its kind.</summary>
    private static JournalRecord? Decode(JournalRecordKind kind, ReadOnlySpan<byte> body) => (kind, body.Length) switch
    {
        (JournalRecordKind.Put, EntryBytes) => Of(kind, ReadEntry(body)),
        (JournalRecordKind.Remove, RemoveBodyBytes) => new JournalRecord(kind, KeyOf(body), SlotOf(body), GenerationOf(body), 0, 0, 0),
        (JournalRecordKind.Touch, KeyBodyBytes) => new JournalRecord(kind, KeyOf(body), 0, 0, 0, 0, 0),
        (JournalRecordKind.Clear, 0) => new JournalRecord(kind, default, 0, 0, 0, 0, 0),
        (JournalRecordKind.Reserve, ReserveBodyBytes) => new JournalRecord(kind, KeyOf(body), SlotOf(body), GenerationOf(body), 0, 0,
            BinaryPrimitives.ReadInt64LittleEndian(body[RsUnixMs..])),
        (JournalRecordKind.Release, ReleaseBodyBytes) => new JournalRecord(kind, default, BinaryPrimitives.ReadInt32LittleEndian(body[RlSlot..]),
            BinaryPrimitives.ReadUInt64LittleEndian(body[RlGeneration..]), 0, 0, 0),
        _ => null,
    };

    private static JournalRecord Of(JournalRecordKind kind, SlotEntry e) => new(kind, e.Key, e.Slot, e.Generation, e.TokenCount, e.PayloadLength, 0);

    private static ChunkKey KeyOf(ReadOnlySpan<byte> body) => new(ReadUInt128(body[EnKey..]));

    private static int SlotOf(ReadOnlySpan<byte> body) => BinaryPrimitives.ReadInt32LittleEndian(body[EnSlot..]);

    private static ulong GenerationOf(ReadOnlySpan<byte> body) => BinaryPrimitives.ReadUInt64LittleEndian(body[EnGeneration..]);

    private byte[] Record(JournalRecordKind kind, ReadOnlySpan<byte> body)
    {
        var record = new byte[RecordOverhead + body.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(record, (ushort)body.Length);
        record[2] = (byte)kind;
        body.CopyTo(record.AsSpan(3));
        WriteUInt128(record.AsSpan(record.Length - MacBytes), secret.Mac(record.AsSpan(0, record.Length - MacBytes)));
        return record;
    }

    private static void WriteEntry(Span<byte> span, SlotEntry e)
    {
        WriteUInt128(span[EnKey..], e.Key.Value);
        BinaryPrimitives.WriteInt32LittleEndian(span[EnSlot..], e.Slot);
        BinaryPrimitives.WriteUInt64LittleEndian(span[EnGeneration..], e.Generation);
        BinaryPrimitives.WriteInt32LittleEndian(span[EnTokenCount..], e.TokenCount);
        BinaryPrimitives.WriteInt64LittleEndian(span[EnPayloadLength..], e.PayloadLength);
    }

    private static SlotEntry ReadEntry(ReadOnlySpan<byte> span) => new(
        KeyOf(span), SlotOf(span), GenerationOf(span),
        BinaryPrimitives.ReadInt32LittleEndian(span[EnTokenCount..]),
        BinaryPrimitives.ReadInt64LittleEndian(span[EnPayloadLength..]));
}
