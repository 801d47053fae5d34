using System.Buffers.Binary;
using System.IO.Hashing;

namespace OrtKvTier.Storage;

/// <summary>
/// Every magic number, size and field offset of what the cache persists, in one place: the slot pool's
/// files and the values of the remote tier. A change to any of them bumps <see cref="FormatVersion"/> (or
/// <see cref="RemoteVersion"/>); the golden tests freeze the bytes.
/// <para>Files in a pool directory: <see cref="DataFileName"/> (file header page, then fixed-size
/// slots, each a header block followed by the payload), <see cref="JournalFileName"/> (append-only
/// index records), <see cref="SnapshotFileName"/> (the compacted index) and <see cref="LockFileName"/>
/// (the writer OS lock). All integers are little-endian. Version 2 authenticates: slot headers, remote value
/// headers, journal records, the journal header and the snapshot end in a 128-bit MAC under the cache's secret
/// key (keyed BLAKE3), payloads are authenticated per block (Poly1305 under per-entry keys, combined into the
/// payload tag the header carries) and, when the entry's flags say so, encrypted with its token ids.</para>
/// </summary>
internal static class StoredFormats
{
    public const uint FormatVersion = 2;
    public const int PageSize = 4096;

    public const string DataFileName = "slots.bin";
    public const string JournalFileName = "index.journal";
    public const string SnapshotFileName = "index.snapshot";
    public const string LockFileName = "writer.lock";

    /// <summary>Payloads are sealed in blocks of this size (a tag each, combined into the payload tag), so blocks are verified in parallel.</summary>
    public const int SealBlockBytes = 1 << 20;

    /// <summary>Bytes of every MAC and tag.</summary>
    public const int MacBytes = 16;

    /// <summary>Bits of a chunk record's flags.</summary>
    [Flags]
    public enum RecordFlags : uint
    {
        None = 0,
        /// <summary>The payload and the token ids are encrypted.</summary>
        Encrypted = 1,
    }

    // File header (page 0).
    public const ulong FileMagic = 0x314C4F4F50564B4F; // "OKVPOOL1"
    public const int FileHeaderBytes = PageSize;
    public const int FhMagic = 0, FhVersion = 8, FhSlotSize = 16, FhSlotCount = 24, FhFingerprint = 32, FhLayers = 48,
        FhKvHeads = 52, FhHeadSize = 56, FhElementSize = 60, FhChunkTokens = 64, FhPoolId = 68, FhWriterEpoch = 76,
        FhChecksum = 88, FhChecksummed = 88;

    // Slot header (start of each slot): a chunk record with the slot number and the write's generation.
    public const ulong SlotMagic = 0x31544F4C53564B4F; // "OKVSLOT1"
    public const int ShSlotNumber = 12, ShGeneration = 16;
    public static readonly ChunkRecordFormat SlotHeader = new(SlotMagic, FormatVersion,
        Key: 24, Fingerprint: 40, LayoutHash: 56, TokenCount: 64, Flags: 68, PayloadLength: 72, PayloadTag: 80, EntryNonce: 96, Tokens: 112);

    /// <summary>Bytes reserved for a slot header with room for <paramref name="chunkTokens"/> ids, page aligned.</summary>
    public static int SlotHeaderBytes(int chunkTokens) => AlignUp(SlotHeader.Length(chunkTokens), PageSize);

    // Remote value: a chunk record with its own length, then the payload.
    public const ulong RemoteMagic = 0x31544D52564B4F; // "OKVRMT1"
    public const uint RemoteVersion = 2;
    public const int RvHeaderBytes = 12;
    public static readonly ChunkRecordFormat RemoteValue = new(RemoteMagic, RemoteVersion,
        Key: 40, Fingerprint: 16, LayoutHash: 32, TokenCount: 56, Flags: 60, PayloadLength: 64, PayloadTag: 72, EntryNonce: 88, Tokens: 104);

    // Journal.
    public const ulong JournalMagic = 0x4C4E524A56564B4F; // "OKVJRNL1" (LE)
    public const int JournalHeaderBytes = 48;
    public const int JhMagic = 0, JhVersion = 8, JhPoolId = 16, JhEpoch = 24, JhMac = 32;
    /// <summary>Record: u16 body length, u8 type, body, MAC of length+type+body.</summary>
    public const int RecordOverhead = 2 + 1 + MacBytes;

    // Snapshot: header, entries oldest-first, MAC of everything before.
    public const ulong SnapshotMagic = 0x50414E5356564B4F; // "OKVSNAP1"
    public const int SnapshotHeaderBytes = 40;
    public const int SnMagic = 0, SnVersion = 8, SnCount = 12, SnPoolId = 16, SnEpoch = 24, SnNextGeneration = 32;
    public const int SnapshotEntryBytes = 40;

    /// <summary>Where an authenticated chunk record (a slot header, a remote value) keeps its fields; magic at 0, version at 8, the header's MAC after the token ids.</summary>
    public sealed record ChunkRecordFormat(ulong Magic, uint Version, int Key, int Fingerprint, int LayoutHash, int TokenCount, int Flags, int PayloadLength, int PayloadTag, int EntryNonce, int Tokens)
    {
        public const int MagicAt = 0, VersionAt = 8;

        public int MacAt(int tokenCount) => Tokens + 4 * tokenCount;

        /// <summary>Bytes of the record's header with <paramref name="tokenCount"/> ids, MAC included.</summary>
        public int Length(int tokenCount) => MacAt(tokenCount) + MacBytes;
    }

    public static int AlignUp(int value, int alignment) => (value + alignment - 1) / alignment * alignment;

    public static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    /// <summary>The checksum of what needs no secret (the data file's header, layout hashes): XxHash64.</summary>
    public static ulong Checksum64(ReadOnlySpan<byte> bytes) => XxHash64.HashToUInt64(bytes);

    public static UInt128 ReadUInt128(ReadOnlySpan<byte> bytes) =>
        new(BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]), BinaryPrimitives.ReadUInt64LittleEndian(bytes));

    public static void WriteUInt128(Span<byte> bytes, UInt128 value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)value);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes[8..], (ulong)(value >> 64));
    }
}
