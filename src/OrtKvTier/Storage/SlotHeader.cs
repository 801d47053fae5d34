using System.Buffers.Binary;
using System.Runtime.InteropServices;
using static OrtKvTier.Storage.SlotPoolFormat;
using OrtKvTier.Keys;
using OrtKvTier.Model;

namespace OrtKvTier.Storage;

/// <summary>Encodes and checks the header at the start of every slot.</summary>
internal static class SlotHeader
{
    /// <summary>Writes a header into <paramref name="header"/> (at least <c>SlotHeaderBytes</c>); returns its used length.</summary>
    public static int Write(Span<byte> header, SlotPoolIdentity identity, int slot, ulong generation, ChunkKey key,
        ReadOnlySpan<int> tokens, long payloadLength, UInt128 payloadChecksum)
    {
        header.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(header[ShMagic..], SlotMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(header[ShVersion..], FormatVersion);
        BinaryPrimitives.WriteInt32LittleEndian(header[ShSlotNumber..], slot);
        BinaryPrimitives.WriteUInt64LittleEndian(header[ShGeneration..], generation);
        WriteUInt128(header[ShKey..], key.Value);
        WriteUInt128(header[ShFingerprint..], identity.Fingerprint.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(header[ShLayoutHash..], identity.LayoutHash);
        BinaryPrimitives.WriteInt32LittleEndian(header[ShTokenCount..], tokens.Length);
        BinaryPrimitives.WriteInt64LittleEndian(header[ShPayloadLength..], payloadLength);
        WriteUInt128(header[ShPayloadChecksum..], payloadChecksum);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(header[(ShTokens + 4 * i)..], tokens[i]);
        int checksumAt = SlotHeaderChecksumOffset(tokens.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(header[checksumAt..], Checksum64(header[..checksumAt]));
        return checksumAt + 8;
    }

    /// <summary>Why a header does not describe the expected entry, or null when it does.</summary>
    /// <remarks>Null <paramref name="generation"/> or <paramref name="key"/> accept any; token ids are compared when <paramref name="checkTokens"/>.</remarks>
    public static string? Check(ReadOnlySpan<byte> header, SlotPoolIdentity identity, int slot, ulong? generation, ChunkKey? key,
        bool checkTokens, ReadOnlySpan<int> tokens, long payloadCapacity, out SlotEntry found, out UInt128 payloadChecksum)
    {
        found = default;
        payloadChecksum = default;
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[ShMagic..]) != SlotMagic) return "no slot header (never written or overwritten)";
        if (BinaryPrimitives.ReadUInt32LittleEndian(header[ShVersion..]) != FormatVersion) return "slot format version differs";
        int tokenCount = BinaryPrimitives.ReadInt32LittleEndian(header[ShTokenCount..]);
        if (tokenCount < 0 || tokenCount > identity.ChunkTokens) return $"token count {tokenCount} out of range";
        int checksumAt = SlotHeaderChecksumOffset(tokenCount);
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[checksumAt..]) != Checksum64(header[..checksumAt])) return "header checksum mismatch";
        if (BinaryPrimitives.ReadInt32LittleEndian(header[ShSlotNumber..]) != slot) return "slot number differs";
        if (ReadUInt128(header[ShFingerprint..]) != identity.Fingerprint.Value) return "model fingerprint differs";
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[ShLayoutHash..]) != identity.LayoutHash) return "layout differs";
        var storedKey = new ChunkKey(ReadUInt128(header[ShKey..]));
        ulong storedGeneration = BinaryPrimitives.ReadUInt64LittleEndian(header[ShGeneration..]);
        if (key is { } k && storedKey != k) return "slot holds another key (rewritten)";
        if (generation is { } g && storedGeneration != g) return "slot generation differs (rewritten)";
        long payloadLength = BinaryPrimitives.ReadInt64LittleEndian(header[ShPayloadLength..]);
        if (payloadLength < 0 || payloadLength > payloadCapacity) return $"payload length {payloadLength} out of range";
        if (checkTokens)
        {
            if (tokenCount != tokens.Length) return $"token count {tokenCount} differs from the {tokens.Length} asked for";
            var stored = MemoryMarshal.Cast<byte, int>(header.Slice(ShTokens, 4 * tokenCount));
            if (BitConverter.IsLittleEndian ? !stored.SequenceEqual(tokens) : !TokensEqualSlow(header, tokens)) return "token ids differ";
        }
        payloadChecksum = ReadUInt128(header[ShPayloadChecksum..]);
        found = new SlotEntry(storedKey, slot, storedGeneration, tokenCount, payloadLength);
        return null;
    }

    private static bool TokensEqualSlow(ReadOnlySpan<byte> header, ReadOnlySpan<int> tokens)
    {
        for (int i = 0; i < tokens.Length; i++)
            if (BinaryPrimitives.ReadInt32LittleEndian(header[(ShTokens + 4 * i)..]) != tokens[i]) return false;
        return true;
    }
}

/// <summary>The fields of the data file's header page.</summary>
internal sealed record FileHeaderFields(uint Version, SlotPoolIdentity Identity, long SlotBytes, long SlotCount, ulong PoolId, uint WriterEpoch);

/// <summary>Encodes and checks the data file's header page.</summary>
internal static class FileHeader
{
    public static byte[] Write(SlotPoolIdentity identity, long slotBytes, int slotCount, ulong poolId, uint writerEpoch)
    {
        var page = new byte[FileHeaderBytes];
        var h = page.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(h[FhMagic..], FileMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(h[FhVersion..], FormatVersion);
        BinaryPrimitives.WriteInt64LittleEndian(h[FhSlotSize..], slotBytes);
        BinaryPrimitives.WriteInt64LittleEndian(h[FhSlotCount..], slotCount);
        WriteUInt128(h[FhFingerprint..], identity.Fingerprint.Value);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhLayers..], identity.Layers);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhKvHeads..], identity.KvHeads);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhHeadSize..], identity.HeadSize);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhElementSize..], identity.ElementSize);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhChunkTokens..], identity.ChunkTokens);
        BinaryPrimitives.WriteUInt64LittleEndian(h[FhPoolId..], poolId);
        BinaryPrimitives.WriteUInt32LittleEndian(h[FhWriterEpoch..], writerEpoch);
        BinaryPrimitives.WriteUInt64LittleEndian(h[FhChecksum..], Checksum64(h[..FhChecksummed]));
        return page;
    }

    /// <summary>Parses the header page; throws <see cref="SlotPoolMismatchException"/> saying what is wrong.</summary>
    public static FileHeaderFields Read(ReadOnlySpan<byte> h, string path)
    {
        if (h.Length < FhChecksum + 8)
            throw new SlotPoolMismatchException($"{path} is {h.Length} bytes, too short for a slot pool header ({FileHeaderBytes} bytes). Delete the directory or open with MismatchPolicy.Recreate.");
        if (BinaryPrimitives.ReadUInt64LittleEndian(h[FhMagic..]) != FileMagic)
            throw new SlotPoolMismatchException($"{path} is not an OrtKvTier slot pool (magic {BinaryPrimitives.ReadUInt64LittleEndian(h[FhMagic..]):x16}, expected {FileMagic:x16}). Delete it or open with MismatchPolicy.Recreate.");
        uint version = BinaryPrimitives.ReadUInt32LittleEndian(h[FhVersion..]);
        if (version != FormatVersion)
            throw new SlotPoolMismatchException($"{path} has format version {version}; this library reads version {FormatVersion}. Delete the directory or open with MismatchPolicy.Recreate.");
        if (BinaryPrimitives.ReadUInt64LittleEndian(h[FhChecksum..]) != Checksum64(h[..FhChecksummed]))
            throw new SlotPoolMismatchException($"{path}: the file header checksum does not match (the header is damaged). Delete the directory or open with MismatchPolicy.Recreate.");
        var identity = new SlotPoolIdentity
        {
            Fingerprint = new Model.ModelFingerprint(ReadUInt128(h[FhFingerprint..])),
            Layers = BinaryPrimitives.ReadInt32LittleEndian(h[FhLayers..]),
            KvHeads = BinaryPrimitives.ReadInt32LittleEndian(h[FhKvHeads..]),
            HeadSize = BinaryPrimitives.ReadInt32LittleEndian(h[FhHeadSize..]),
            ElementSize = BinaryPrimitives.ReadInt32LittleEndian(h[FhElementSize..]),
            ChunkTokens = BinaryPrimitives.ReadInt32LittleEndian(h[FhChunkTokens..]),
        };
        return new FileHeaderFields(version, identity,
            BinaryPrimitives.ReadInt64LittleEndian(h[FhSlotSize..]),
            BinaryPrimitives.ReadInt64LittleEndian(h[FhSlotCount..]),
            BinaryPrimitives.ReadUInt64LittleEndian(h[FhPoolId..]),
            BinaryPrimitives.ReadUInt32LittleEndian(h[FhWriterEpoch..]));
    }
}
