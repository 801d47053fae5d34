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
