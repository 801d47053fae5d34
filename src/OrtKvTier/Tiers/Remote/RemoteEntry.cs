using System.Buffers.Binary;
using System.IO.Hashing;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Tiers.Remote;

/// <summary>
/// A remote value: a <see cref="ChunkRecord"/> header (<see cref="StoredFormats.RemoteValue"/>, with its own length
/// at <see cref="StoredFormats.RvHeaderBytes"/>; the payload checksum is one XxHash128), then the payload.
/// Anything that does not check out is foreign, truncated or tampered with.
/// </summary>
internal static class RemoteEntry
{
    public const uint Version = StoredFormats.RemoteVersion;

    public static byte[] Encode(SlotPoolIdentity identity, ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        int header = StoredFormats.RemoteValue.Length(tokens.Length);
        var value = new byte[header + payload.Length];
        ChunkRecord.Write(value, StoredFormats.RemoteValue, identity, key, tokens, payload.Length, XxHash128.HashToUInt128(payload),
            own => BinaryPrimitives.WriteInt32LittleEndian(own[StoredFormats.RvHeaderBytes..], header));
        payload.CopyTo(value.AsSpan(header));
        return value;
    }

    /// <summary>Null when the value is this entry's, with payload copied to <paramref name="destination"/>; otherwise why not.</summary>
    public static string? Decode(ReadOnlySpan<byte> value, SlotPoolIdentity identity, ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination)
    {
        if (ChunkRecord.Check(value, StoredFormats.RemoteValue, identity, identity.ChunkTokens, out var fields) is { } failure) return failure;
        int header = BinaryPrimitives.ReadInt32LittleEndian(value[StoredFormats.RvHeaderBytes..]);
        if (header != StoredFormats.RemoteValue.Length(fields.TokenCount)) return "header length differs from its token count";
        if (fields.Key != key) return "another chunk's entry (key)";
        if (!ChunkRecord.TokensEqual(value, StoredFormats.RemoteValue, tokens)) return "token ids differ";
        if (fields.PayloadLength != destination.Length) return $"payload of {fields.PayloadLength} bytes, expected {destination.Length}";
        if (value.Length - header != fields.PayloadLength) return $"truncated payload ({value.Length - header} of {fields.PayloadLength} bytes)";
        value[header..].CopyTo(destination);
        if (XxHash128.HashToUInt128(destination) != fields.PayloadChecksum) return "payload checksum mismatch";
        return null;
    }
}
