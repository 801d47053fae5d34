using System.Buffers.Binary;
using OrtKvTier.Model;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

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
        BinaryPrimitives.WriteUInt32LittleEndian(h[FhEncoding..], (uint)identity.Encoding);
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
            throw new SlotPoolMismatchException($"{VersionMismatch(path, version, FormatVersion)}: its entries cannot be read. Remove it (`ortkv cache prune --other-versions`), delete the directory, or open with MismatchPolicy.Recreate.")
            {
                FoundVersion = version,
            };
        if (BinaryPrimitives.ReadUInt64LittleEndian(h[FhChecksum..]) != Checksum64(h[..FhChecksummed]))
            throw new SlotPoolMismatchException($"{path}: the file header checksum does not match (the header is damaged). Delete the directory or open with MismatchPolicy.Recreate.");
        SlotPoolIdentity identity;
        try
        {
            identity = SlotPoolIdentity.For(new ModelFingerprint(ReadUInt128(h[FhFingerprint..])),
                new KvShape(BinaryPrimitives.ReadInt32LittleEndian(h[FhLayers..]), BinaryPrimitives.ReadInt32LittleEndian(h[FhKvHeads..]),
                    BinaryPrimitives.ReadInt32LittleEndian(h[FhHeadSize..]), BinaryPrimitives.ReadInt32LittleEndian(h[FhElementSize..])),
                BinaryPrimitives.ReadInt32LittleEndian(h[FhChunkTokens..])) with { Encoding = (Tensors.KvEncoding)BinaryPrimitives.ReadUInt32LittleEndian(h[FhEncoding..]) };
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

    /// <summary>Bytes of a damaged header that may differ from the header its pool would have, for it to be repaired.</summary>
    public const int RepairableBytes = 4;

    /// <summary>
    /// Whether <paramref name="damaged"/> (a header page whose checksum fails) is this pool's header with a few bytes changed:
    /// against the header <paramref name="identity"/>, <paramref name="slotCount"/> slots and the damaged page's own pool id and
    /// writer epoch would have, at most <see cref="RepairableBytes"/> bytes of the checksummed fields differ (pool id and epoch
    /// not counted: those a repair takes from elsewhere).
    /// </summary>
    public static bool IsDamagedCopyOf(ReadOnlySpan<byte> damaged, SlotPoolIdentity identity, int slotCount)
    {
        if (damaged.Length < FileHeaderBytes || BinaryPrimitives.ReadUInt64LittleEndian(damaged[FhChecksum..]) == Checksum64(damaged[..FhChecksummed])) return false;
        var expected = Write(identity, identity.SlotBytes, slotCount, BinaryPrimitives.ReadUInt64LittleEndian(damaged[FhPoolId..]),
            BinaryPrimitives.ReadUInt32LittleEndian(damaged[FhWriterEpoch..]));
        int differing = 0;
        for (int i = 0; i < FhChecksummed; i++)
            if (damaged[i] != expected[i]) differing++;
        return differing <= RepairableBytes;
    }
}
