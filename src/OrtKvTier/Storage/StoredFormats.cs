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
/// (the single-writer OS lock). All integers are little-endian.</para>
/// </summary>
internal static class StoredFormats
{
    public const uint FormatVersion = 1;
    public const int PageSize = 4096;

    public const string DataFileName = "slots.bin";
    public const string JournalFileName = "index.journal";
    public const string SnapshotFileName = "index.snapshot";
    public const string LockFileName = "writer.lock";

    /// <summary>Payload checksums are XxHash128 over the XxHash128 of each block of this size, so blocks can be verified in parallel.</summary>
    public const int ChecksumBlockBytes = 1 << 20;

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
        Key: 24, Fingerprint: 40, LayoutHash: 56, TokenCount: 64, PayloadLength: 72, PayloadChecksum: 80, Tokens: 96);

    /// <summary>Bytes reserved for a slot header with room for <paramref name="chunkTokens"/> ids, page aligned.</summary>
    public static int SlotHeaderBytes(int chunkTokens) => AlignUp(SlotHeader.Length(chunkTokens), PageSize);

    // Remote value: a chunk record with its own length, then the payload. Its payload checksum is one XxHash128.
    public const ulong RemoteMagic = 0x31544D52564B4F; // "OKVRMT1"
    public const uint RemoteVersion = 1;
    public const int RvHeaderBytes = 12;
    public static readonly ChunkRecordFormat RemoteValue = new(RemoteMagic, RemoteVersion,
        Key: 40, Fingerprint: 16, LayoutHash: 32, TokenCount: 56, PayloadLength: 60, PayloadChecksum: 68, Tokens: 84);

    // Journal.
    public const ulong JournalMagic = 0x4C4E524A56564B4F; // "OKVJRNL1" (LE)
    public const int JournalHeaderBytes = 40;
    public const int JhMagic = 0, JhVersion = 8, JhPoolId = 16, JhEpoch = 24, JhChecksum = 32;
    /// <summary>Record: u16 body length, u8 type, body, u64 XxHash64 of length+type+body.</summary>
    public const int RecordOverhead = 2 + 1 + 8;

    // Snapshot: header, entries oldest-first, u64 XxHash64 of everything before.
    public const ulong SnapshotMagic = 0x50414E5356564B4F; // "OKVSNAP1"
    public const int SnapshotHeaderBytes = 40;
    public const int SnMagic = 0, SnVersion = 8, SnCount = 12, SnPoolId = 16, SnEpoch = 24, SnNextGeneration = 32;
    public const int SnapshotEntryBytes = 40;

    /// <summary>Where a self-verifying chunk record (a slot header, a remote value) keeps its fields; magic at 0, version at 8, header checksum (XxHash64) after the token ids.</summary>
    public sealed record ChunkRecordFormat(ulong Magic, uint Version, int Key, int Fingerprint, int LayoutHash, int TokenCount, int PayloadLength, int PayloadChecksum, int Tokens)
    {
        public const int MagicAt = 0, VersionAt = 8;

        public int ChecksumAt(int tokenCount) => Tokens + 4 * tokenCount;

        /// <summary>Bytes of the record's header with <paramref name="tokenCount"/> ids, checksum included.</summary>
        public int Length(int tokenCount) => ChecksumAt(tokenCount) + 8;
    }

    public static int AlignUp(int value, int alignment) => (value + alignment - 1) / alignment * alignment;

    public static long AlignUp(long value, long alignment) => (value + alignment - 1) / alignment * alignment;

    public static ulong Checksum64(ReadOnlySpan<byte> bytes) => XxHash64.HashToUInt64(bytes);

    public static UInt128 ReadUInt128(ReadOnlySpan<byte> bytes) =>
        new(BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]), BinaryPrimitives.ReadUInt64LittleEndian(bytes));

    public static void WriteUInt128(Span<byte> bytes, UInt128 value)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)value);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes[8..], (ulong)(value >> 64));
    }
}
