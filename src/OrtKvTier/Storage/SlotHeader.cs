using System.Buffers.Binary;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>Encodes and checks the header at the start of every slot: a <see cref="ChunkRecord"/> plus the slot number and the write's generation.</summary>
internal static class SlotHeader
{
    /// <summary>Writes a header into <paramref name="header"/> (at least <c>SlotHeaderBytes</c>, cleared); returns its used length.</summary>
    public static int Write(Span<byte> header, SlotPoolIdentity identity, CacheSecret secret, int slot, ulong generation, ChunkKey key,
        ReadOnlySpan<int> tokens, SealedPayload payload)
    {
        header.Clear();
        return ChunkRecord.Write(header, StoredFormats.SlotHeader, identity, secret, key, tokens, payload, own =>
        {
            BinaryPrimitives.WriteInt32LittleEndian(own[ShSlotNumber..], slot);
            BinaryPrimitives.WriteUInt64LittleEndian(own[ShGeneration..], generation);
        });
    }

    /// <summary>Why a header does not describe the expected entry, or null when it does.</summary>
    /// <remarks>Null <paramref name="generation"/> or <paramref name="key"/> accept any; token ids are compared when <paramref name="checkTokens"/>.</remarks>
    public static string? Check(ReadOnlySpan<byte> header, SlotPoolIdentity identity, CacheSecret secret, int slot, ulong? generation, ChunkKey? key,
        bool checkTokens, ReadOnlySpan<int> tokens, long payloadCapacity, out SlotEntry found, out ChunkRecordFields fields)
    {
        found = default;
        if (ChunkRecord.Check(header, StoredFormats.SlotHeader, identity, secret, identity.ChunkTokens, out fields) is { } failure) return failure;
        if (BinaryPrimitives.ReadInt32LittleEndian(header[ShSlotNumber..]) != slot) return "slot number differs";
        ulong storedGeneration = BinaryPrimitives.ReadUInt64LittleEndian(header[ShGeneration..]);
        if (key is { } k && fields.Key != k) return "slot holds another key (rewritten)";
        if (generation is { } g && storedGeneration != g) return "slot generation differs (rewritten)";
        if (fields.PayloadLength < 0 || fields.PayloadLength > payloadCapacity) return $"payload length {fields.PayloadLength} out of range";
        if (checkTokens)
        {
            if (fields.TokenCount != tokens.Length) return $"token count {fields.TokenCount} differs from the {tokens.Length} asked for";
            if (!ChunkRecord.TokensEqual(header, StoredFormats.SlotHeader, fields, secret, tokens)) return "token ids differ";
        }
        found = new SlotEntry(fields.Key, slot, storedGeneration, fields.TokenCount, fields.PayloadLength);
        return null;
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
        BinaryPrimitives.WriteInt32LittleEndian(h[FhLayers..], identity.Shape.Layers);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhKvHeads..], identity.Shape.KvHeads);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhHeadSize..], identity.Shape.HeadSize);
        BinaryPrimitives.WriteInt32LittleEndian(h[FhElementSize..], identity.Shape.ElementSize);
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
        SlotPoolIdentity identity;
        try
        {
            identity = SlotPoolIdentity.For(new ModelFingerprint(ReadUInt128(h[FhFingerprint..])),
                new KvShape(BinaryPrimitives.ReadInt32LittleEndian(h[FhLayers..]), BinaryPrimitives.ReadInt32LittleEndian(h[FhKvHeads..]),
                    BinaryPrimitives.ReadInt32LittleEndian(h[FhHeadSize..]), BinaryPrimitives.ReadInt32LittleEndian(h[FhElementSize..])),
                BinaryPrimitives.ReadInt32LittleEndian(h[FhChunkTokens..]));
        }
        catch (ArgumentException e)
        {
            throw new SlotPoolMismatchException($"{path}: the header describes no valid layout ({e.Message}). Delete the directory or open with MismatchPolicy.Recreate.");
        }
        return new FileHeaderFields(version, identity,
            BinaryPrimitives.ReadInt64LittleEndian(h[FhSlotSize..]),
            BinaryPrimitives.ReadInt64LittleEndian(h[FhSlotCount..]),
            BinaryPrimitives.ReadUInt64LittleEndian(h[FhPoolId..]),
            BinaryPrimitives.ReadUInt32LittleEndian(h[FhWriterEpoch..]));
    }
}
