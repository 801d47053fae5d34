using System.Buffers.Binary;
using System.IO.Hashing;

namespace OrtKvTier.Storage;

/// <summary>
/// Every magic number, size, field offset and record kind of what the cache persists, in one place: the slot pool's
/// files (data file header, slot headers, payload blocks, journal header and records, snapshot) and the values of the
/// remote tier. A change to any byte layout bumps <see cref="FormatVersion"/> (or <see cref="RemoteVersion"/>): the
/// golden tests (tests/OrtKvTier.Tests/Storage/PersistedFormatTests.cs) fail when bytes change under the same version,
/// and files or values of any other version are refused by version, naming both.
/// <para>Files in a pool directory: <see cref="DataFileName"/> (file header page, then fixed-size slots, each a header
/// block followed by the payload), <see cref="JournalFileName"/> (append-only index records), <see cref="SnapshotFileName"/>
/// (the compacted index) and <see cref="LockFileName"/> (the writer OS lock). All integers are little-endian. Slot
/// headers, remote value headers, journal records, the journal header and the snapshot end in a 128-bit MAC under the
/// cache's secret key (keyed BLAKE3); payloads are authenticated per <see cref="SealBlockBytes"/> block (Poly1305 under
/// a per-entry key, the block tags combined by keyed BLAKE3 into the payload tag the header carries) and, when the
/// entry's flags say so, encrypted with its token ids (AES-256-CTR).</para>
/// <para>Versions: 1 checksummed (XxHash128), nothing authenticated. 2 authenticated; its payload tag was first AES-GMAC,
/// then Poly1305 under the same version number (so version 2 files are refused whole). 3 (this one): Poly1305 payload
/// tags; journal records for slot reservations (<see cref="JournalRecordKind.Reserve"/>, <see cref="JournalRecordKind.Release"/>)
/// so several processes write slots without holding the lock; removals name the slot and generation they remove; the
/// snapshot has no next-generation field.</para>
/// </summary>
internal static class StoredFormats
{
    public const uint FormatVersion = 3;
    public const int PageSize = 4096;

    public const string DataFileName = "slots.bin";
    public const string JournalFileName = "index.journal";
    public const string SnapshotFileName = "index.snapshot";
    public const string LockFileName = "writer.lock";
    /// <summary>Each writer holds an OS lock on byte <c>epoch</c> of this file while it lives, so others can tell its slot reservations are abandoned.</summary>
    public const string LivenessFileName = "writers.alive";
    /// <summary>A pool's temporary files end in this (a new data file, journal or snapshot being written; <c>NAME.RANDOM.tmp</c>).</summary>
    public const string TemporarySuffix = ".tmp";

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

    // File header (page 0). A writer opening the pool bumps the writer epoch; generations are (epoch << 32) | counter.
    public const ulong FileMagic = 0x314C4F4F50564B4F; // "OKVPOOL1"
    public const int FileHeaderBytes = PageSize;
    public const int FhMagic = 0, FhVersion = 8, FhSlotSize = 16, FhSlotCount = 24, FhFingerprint = 32, FhLayers = 48,
        FhKvHeads = 52, FhHeadSize = 56, FhElementSize = 60, FhChunkTokens = 64, FhPoolId = 68, FhWriterEpoch = 76,
        FhEncoding = 80, FhChecksum = 88, FhChecksummed = 88;

    // Slot header (start of each slot): a chunk record with the slot number and the write's generation.
    public const ulong SlotMagic = 0x31544F4C53564B4F; // "OKVSLOT1"
    public const int ShSlotNumber = 12, ShGeneration = 16;
    public static readonly ChunkRecordFormat SlotHeader = new(SlotMagic, FormatVersion,
        Key: 24, Fingerprint: 40, LayoutHash: 56, TokenCount: 64, Flags: 68, PayloadLength: 72, PayloadTag: 80, EntryNonce: 96, Tokens: 112);

    /// <summary>Bytes reserved for a slot header with room for <paramref name="chunkTokens"/> ids, page aligned.</summary>
    public static int SlotHeaderBytes(int chunkTokens) => AlignUp(SlotHeader.Length(chunkTokens), PageSize);

    /// <summary>Bytes of a slot header actually written (the part past its MAC, rounded to 512 bytes, is left alone).</summary>
    public static int SlotHeaderWriteBytes(int used) => AlignUp(used, 512);

    // Remote value: a chunk record with its own length, then the payload.
    public const ulong RemoteMagic = 0x31544D52564B4F; // "OKVRMT1"
    public const uint RemoteVersion = 3;
    public const int RvHeaderBytes = 12;
    public static readonly ChunkRecordFormat RemoteValue = new(RemoteMagic, RemoteVersion,
        Key: 40, Fingerprint: 16, LayoutHash: 32, TokenCount: 56, Flags: 60, PayloadLength: 64, PayloadTag: 72, EntryNonce: 88, Tokens: 104);

    // Journal: a header, then records.
    public const ulong JournalMagic = 0x4C4E524A56564B4F; // "OKVJRNL1" (LE)
    public const int JournalHeaderBytes = 48;
    public const int JhMagic = 0, JhVersion = 8, JhPoolId = 16, JhEpoch = 24, JhMac = 32;
    /// <summary>Record framing: u16 body length, u8 kind, body, MAC of length+kind+body.</summary>
    public const int RecordOverhead = 2 + 1 + MacBytes;

    /// <summary>Kinds of journal records, and the length of each one's body.</summary>
    public enum JournalRecordKind : byte
    {
        /// <summary>An entry is stored: <see cref="EntryBytes"/> (key, slot, generation, token count, payload length). Publishes the slot's reservation.</summary>
        Put = 1,
        /// <summary>An entry is gone: key, slot, generation (<see cref="RemoveBodyBytes"/>); applied only while the index holds that very write.</summary>
        Remove = 2,
        /// <summary>An entry was used: key (16 bytes).</summary>
        Touch = 3,
        /// <summary>Every entry is gone (empty body); slots being written stay reserved.</summary>
        Clear = 4,
        /// <summary>A slot is being written: key, slot, generation, Unix milliseconds (<see cref="ReserveBodyBytes"/>). Nobody else takes it until its Put or Release, or it expires.</summary>
        Reserve = 5,
        /// <summary>A reservation let go (its write failed): slot, generation (<see cref="ReleaseBodyBytes"/>).</summary>
        Release = 6,
    }

    /// <summary>An index entry, in a Put record and in the snapshot: key 0, slot 16, generation 20, token count 28, payload length 32.</summary>
    public const int EntryBytes = 40;
    public const int EnKey = 0, EnSlot = 16, EnGeneration = 20, EnTokenCount = 28, EnPayloadLength = 32;
    public const int KeyBodyBytes = 16;
    /// <summary>Remove: key 0, slot 16, generation 20.</summary>
    public const int RemoveBodyBytes = 28;
    /// <summary>Reserve: key 0, slot 16, generation 20, Unix milliseconds 28.</summary>
    public const int ReserveBodyBytes = 36;
    public const int RsUnixMs = 28;
    /// <summary>Release: slot 0, generation 4.</summary>
    public const int ReleaseBodyBytes = 12;
    public const int RlSlot = 0, RlGeneration = 4;

    // Snapshot: header, entries oldest-first, MAC of everything before.
    public const ulong SnapshotMagic = 0x50414E5356564B4F; // "OKVSNAP1"
    public const int SnapshotHeaderBytes = 32;
    public const int SnMagic = 0, SnVersion = 8, SnCount = 12, SnPoolId = 16, SnEpoch = 24;

    /// <summary>Where an authenticated chunk record (a slot header, a remote value) keeps its fields; magic at 0, version at 8, the header's MAC after the token ids.</summary>
    public sealed record ChunkRecordFormat(ulong Magic, uint Version, int Key, int Fingerprint, int LayoutHash, int TokenCount, int Flags, int PayloadLength, int PayloadTag, int EntryNonce, int Tokens)
    {
        public const int MagicAt = 0, VersionAt = 8;

        public int MacAt(int tokenCount) => Tokens + 4 * tokenCount;

        /// <summary>Bytes of the record's header with <paramref name="tokenCount"/> ids, MAC included.</summary>
        public int Length(int tokenCount) => MacAt(tokenCount) + MacBytes;
    }

    /// <summary>The sentence every refusal by version uses.</summary>
    public static string VersionMismatch(string what, uint found, uint expected) =>
        $"{what} has format version {found}; this library reads version {expected}";

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
