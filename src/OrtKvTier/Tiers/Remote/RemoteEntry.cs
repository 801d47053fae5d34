using System.Buffers.Binary;
using System.IO.Hashing;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Tiers.Remote;

/// <summary>
/// A remote value: the same self-verifying form as a slot. Header (magic, version, fingerprint,
/// layout hash, key, token count, payload length, payload checksum, token ids, header checksum), then
/// the payload. Anything that does not check out is foreign, truncated or tampered with.
/// </summary>
internal static class RemoteEntry
{
    private const ulong Magic = 0x31544D52564B4F; // "OKVRMT1"
    public const uint Version = 1;
    private const int FixedHeader = 8 + 4 + 4 + 16 + 8 + 16 + 4 + 8 + 16; // magic, version, header bytes, fingerprint, layout, key, tokens, payload, checksum

    public static byte[] Encode(SlotPoolIdentity identity, ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        int header = HeaderBytes(tokens.Length);
        var value = new byte[header + payload.Length];
        var h = value.AsSpan();
        BinaryPrimitives.WriteUInt64LittleEndian(h, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(h[8..], Version);
        BinaryPrimitives.WriteInt32LittleEndian(h[12..], header);
        BinaryPrimitives.WriteUInt128LittleEndian(h[16..], identity.Fingerprint.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(h[32..], identity.LayoutHash);
        BinaryPrimitives.WriteUInt128LittleEndian(h[40..], key.Value);
        BinaryPrimitives.WriteInt32LittleEndian(h[56..], tokens.Length);
        BinaryPrimitives.WriteInt64LittleEndian(h[60..], payload.Length);
        BinaryPrimitives.WriteUInt128LittleEndian(h[68..], XxHash128.HashToUInt128(payload));
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(h[(FixedHeader + 4 * i)..], tokens[i]);
        BinaryPrimitives.WriteUInt64LittleEndian(h[(header - 8)..], XxHash64.HashToUInt64(h[..(header - 8)]));
        payload.CopyTo(h[header..]);
        return value;
    }

    /// <summary>Null when the value is this entry's, with payload copied to <paramref name="destination"/>; otherwise why not.</summary>
    public static string? Decode(ReadOnlySpan<byte> value, SlotPoolIdentity identity, ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination)
    {
        if (value.Length < FixedHeader + 8) return $"{value.Length} bytes is shorter than a header";
        if (BinaryPrimitives.ReadUInt64LittleEndian(value) != Magic) return "not an OrtKvTier entry (magic)";
        if (BinaryPrimitives.ReadUInt32LittleEndian(value[8..]) != Version) return "another format version";
        int header = BinaryPrimitives.ReadInt32LittleEndian(value[12..]);
        if (header < FixedHeader + 8 || header > value.Length) return "truncated header";
        if (XxHash64.HashToUInt64(value[..(header - 8)]) != BinaryPrimitives.ReadUInt64LittleEndian(value[(header - 8)..])) return "header checksum mismatch";
        if (BinaryPrimitives.ReadUInt128LittleEndian(value[16..]) != identity.Fingerprint.Value) return "another model's entry (fingerprint)";
        if (BinaryPrimitives.ReadUInt64LittleEndian(value[32..]) != identity.LayoutHash) return "another layout or chunk length";
        if (BinaryPrimitives.ReadUInt128LittleEndian(value[40..]) != key.Value) return "another chunk's entry (key)";
        int count = BinaryPrimitives.ReadInt32LittleEndian(value[56..]);
        if (count != tokens.Length || header != HeaderBytes(count)) return "token count differs";
        for (int i = 0; i < count; i++)
            if (BinaryPrimitives.ReadInt32LittleEndian(value[(FixedHeader + 4 * i)..]) != tokens[i]) return "token ids differ";
        long length = BinaryPrimitives.ReadInt64LittleEndian(value[60..]);
        if (length != destination.Length) return $"payload of {length} bytes, expected {destination.Length}";
        if (value.Length - header != length) return $"truncated payload ({value.Length - header} of {length} bytes)";
        var payload = value[header..];
        payload.CopyTo(destination);
        if (XxHash128.HashToUInt128(destination) != BinaryPrimitives.ReadUInt128LittleEndian(value[68..])) return "payload checksum mismatch";
        return null;
    }

    private static int HeaderBytes(int tokens) => FixedHeader + 4 * tokens + 8;
}
