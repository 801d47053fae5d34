using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Keys;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>Kinds of journal records.</summary>
internal enum JournalRecordType : byte
{
    Put = 1,
    Remove = 2,
    Touch = 3,
    Clear = 4,
}

/// <summary>
/// Reads and writes the index journal (append-only records, each with a MAC under the cache's secret) and the
/// snapshot it is compacted into. A journal belongs to one pool (pool id) and one snapshot epoch; recovery
/// replays records up to the first one that is torn or fails its MAC (a forged record ends the replay there).
/// </summary>
internal sealed class IndexJournal(CacheSecret secret)
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

    /// <summary>Reads the journal's epoch, or null when the header is missing, damaged or another pool's.</summary>
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
    /// Applies the complete, valid records of <paramref name="bytes"/> from <paramref name="offset"/> to
    /// <paramref name="index"/>, up to the first one that is torn or fails its MAC; a record that checks out
    /// but does not fit (unknown kind, wrong body length, slot out of range) is skipped. Returns where the valid
    /// records end, how many were applied and how many skipped.
    /// </summary>
    public (long ValidEnd, int Records, int Skipped) Replay(ReadOnlySpan<byte> bytes, long offset, SlotIndex index)
    {
        int records = 0, skipped = 0;
        int pos = (int)offset;
        while (pos + RecordOverhead <= bytes.Length)
        {
            int bodyLength = BinaryPrimitives.ReadUInt16LittleEndian(bytes[pos..]);
            int total = RecordOverhead + bodyLength;
            if (pos + total > bytes.Length) break;
            var record = bytes.Slice(pos, total);
            if (ReadUInt128(record[^MacBytes..]) != secret.Mac(record[..^MacBytes])) break;
            if (Apply((JournalRecordType)record[2], record.Slice(3, bodyLength), index)) records++;
            else skipped++;
            pos += total;
        }
        return (pos, records, skipped);
    }

    public byte[] PutRecord(SlotEntry e)
    {
        var body = new byte[40];
        WriteEntry(body, e);
        return Record(JournalRecordType.Put, body);
    }

    public byte[] RemoveRecord(ChunkKey key)
    {
        var body = new byte[16];
        WriteUInt128(body, key.Value);
        return Record(JournalRecordType.Remove, body);
    }

    public byte[] TouchRecord(ChunkKey key)
    {
        var body = new byte[16];
        WriteUInt128(body, key.Value);
        return Record(JournalRecordType.Touch, body);
    }

    public byte[] ClearRecord() => Record(JournalRecordType.Clear, []);

    /// <summary>The snapshot of <paramref name="entries"/> (least recently used first).</summary>
    public byte[] Snapshot(ulong poolId, long epoch, ulong nextGeneration, IReadOnlyList<SlotEntry> entries)
    {
        var bytes = new byte[SnapshotHeaderBytes + entries.Count * SnapshotEntryBytes + MacBytes];
        var span = bytes.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(span[SnMagic..], SnapshotMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(span[SnVersion..], FormatVersion);
        BinaryPrimitives.WriteInt32LittleEndian(span[SnCount..], entries.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(span[SnPoolId..], poolId);
        BinaryPrimitives.WriteInt64LittleEndian(span[SnEpoch..], epoch);
        BinaryPrimitives.WriteUInt64LittleEndian(span[SnNextGeneration..], nextGeneration);
        for (int i = 0; i < entries.Count; i++) WriteEntry(span.Slice(SnapshotHeaderBytes + i * SnapshotEntryBytes), entries[i]);
        WriteUInt128(span[^MacBytes..], secret.Mac(span[..^MacBytes]));
        return bytes;
    }

    /// <summary>Loads a snapshot into <paramref name="index"/>; returns its epoch, or null when it is absent, damaged or another pool's.</summary>
    public long? LoadSnapshot(ReadOnlySpan<byte> bytes, ulong poolId, SlotIndex index)
    {
        if (bytes.Length < SnapshotHeaderBytes + MacBytes) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[SnMagic..]) != SnapshotMagic) return null;
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes[SnVersion..]) != FormatVersion) return null;
        if (BinaryPrimitives.ReadUInt64LittleEndian(bytes[SnPoolId..]) != poolId) return null;
        int count = BinaryPrimitives.ReadInt32LittleEndian(bytes[SnCount..]);
        if (count < 0 || bytes.Length != SnapshotHeaderBytes + (long)count * SnapshotEntryBytes + MacBytes) return null;
        if (ReadUInt128(bytes[^MacBytes..]) != secret.Mac(bytes[..^MacBytes])) return null;
        // An entry from a generation the snapshot says was not handed out yet does not fit: it is skipped.
        ulong nextGeneration = BinaryPrimitives.ReadUInt64LittleEndian(bytes[SnNextGeneration..]);
        for (int i = 0; i < count; i++)
            if (ReadEntry(bytes.Slice(SnapshotHeaderBytes + i * SnapshotEntryBytes)) is var entry && entry.Generation < nextGeneration) index.Put(entry);
        return BinaryPrimitives.ReadInt64LittleEndian(bytes[SnEpoch..]);
    }

    /// <summary>Reads a whole file that another process may be writing or replacing; null when absent.</summary>
    public static byte[]? ReadFile(string path)
    {
        try
        {
            PoolFiles.RefuseLink(path);
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            return ReadAll(handle);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
    }

    public static byte[] ReadAll(SafeFileHandle handle)
    {
        long length = RandomAccess.GetLength(handle);
        var bytes = new byte[length];
        int read = 0;
        while (read < bytes.Length)
        {
            int n = RandomAccess.Read(handle, bytes.AsSpan(read), read);
            if (n == 0) break;
            read += n;
        }
        return read == bytes.Length ? bytes : bytes[..read];
    }

    private static bool Apply(JournalRecordType type, ReadOnlySpan<byte> body, SlotIndex index)
    {
        switch (type)
        {
            case JournalRecordType.Put when body.Length == 40:
                return index.Put(ReadEntry(body));
            case JournalRecordType.Remove when body.Length == 16:
                index.Remove(new ChunkKey(ReadUInt128(body)));
                return true;
            case JournalRecordType.Touch when body.Length == 16:
                index.Touch(new ChunkKey(ReadUInt128(body)));
                return true;
            case JournalRecordType.Clear when body.Length == 0:
                index.Clear();
                return true;
            default:
                return false;
        }
    }

    private byte[] Record(JournalRecordType type, ReadOnlySpan<byte> body)
    {
        var record = new byte[RecordOverhead + body.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(record, (ushort)body.Length);
        record[2] = (byte)type;
        body.CopyTo(record.AsSpan(3));
        WriteUInt128(record.AsSpan(record.Length - MacBytes), secret.Mac(record.AsSpan(0, record.Length - MacBytes)));
        return record;
    }

    private static void WriteEntry(Span<byte> span, SlotEntry e)
    {
        WriteUInt128(span, e.Key.Value);
        BinaryPrimitives.WriteInt32LittleEndian(span[16..], e.Slot);
        BinaryPrimitives.WriteUInt64LittleEndian(span[20..], e.Generation);
        BinaryPrimitives.WriteInt32LittleEndian(span[28..], e.TokenCount);
        BinaryPrimitives.WriteInt64LittleEndian(span[32..], e.PayloadLength);
    }

    private static SlotEntry ReadEntry(ReadOnlySpan<byte> span) => new(
        new ChunkKey(ReadUInt128(span)),
        BinaryPrimitives.ReadInt32LittleEndian(span[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(span[20..]),
        BinaryPrimitives.ReadInt32LittleEndian(span[28..]),
        BinaryPrimitives.ReadInt64LittleEndian(span[32..]));
}
