using System.Buffers.Binary;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using OrtKvTier.Storage;

namespace OrtKvTier.Tiers.Remote;

/// <summary>
/// A remote value: a <see cref="ChunkRecord"/> header (<see cref="StoredFormats.RemoteValue"/>, with its own length
/// at <see cref="StoredFormats.RvHeaderBytes"/>), then the payload sealed like a slot's (<see cref="PayloadSeal"/>).
/// Anything that does not check out is foreign, truncated, forged or written under another key.
/// </summary>
internal static class RemoteEntry
{
    public const uint Version = StoredFormats.RemoteVersion;

    /// <summary>The value of a chunk, sealed under a fresh entry nonce (or <paramref name="entryNonce"/>: tests that freeze the format).</summary>
    public static byte[] Encode(SlotPoolIdentity identity, CacheSecret secret, bool encrypt, ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload,
        UInt128? entryNonce = null)
    {
        int header = StoredFormats.RemoteValue.Length(tokens.Length);
        var value = new byte[header + payload.Length];
        var nonce = entryNonce ?? CacheSecret.NewEntryNonce();
        var seal = secret.SealFor(nonce, encrypt);
        var tag = PayloadSeal.SealInto(payload, value.AsSpan(header), seal);
        ChunkRecord.Write(value, StoredFormats.RemoteValue, identity, secret, key, tokens, new SealedPayload(payload.Length, tag, nonce, seal),
            own => BinaryPrimitives.WriteInt32LittleEndian(own[StoredFormats.RvHeaderBytes..], header));
        return value;
    }

    /// <summary>The format version of an OrtKvTier value (whatever version wrote it), or null for a value that is none.</summary>
    public static uint? VersionOf(ReadOnlySpan<byte> value) =>
        value.Length >= StoredFormats.ChunkRecordFormat.VersionAt + 4 &&
        BinaryPrimitives.ReadUInt64LittleEndian(value[StoredFormats.ChunkRecordFormat.MagicAt..]) == StoredFormats.RemoteValue.Magic
            ? BinaryPrimitives.ReadUInt32LittleEndian(value[StoredFormats.ChunkRecordFormat.VersionAt..]) : null;

    /// <summary>Null when the value is this entry's, with payload opened into <paramref name="destination"/>; otherwise why not.</summary>
    public static string? Decode(ReadOnlySpan<byte> value, SlotPoolIdentity identity, CacheSecret secret, ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination) =>
        Open(value, value.Length, identity, secret, key, tokens, destination);

    /// <summary>
    /// As <see cref="Decode"/>, for a value received in two parts: <paramref name="header"/> (its first
    /// <see cref="StoredFormats.RemoteValue"/> length bytes) and the sealed payload already in <paramref name="payload"/>,
    /// opened there.
    /// </summary>
    public static string? DecodeInPlace(ReadOnlySpan<byte> header, SlotPoolIdentity identity, CacheSecret secret, ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> payload) =>
        Open(header, header.Length + (long)payload.Length, identity, secret, key, tokens, payload);

    /// <summary>Checks a value of <paramref name="valueLength"/> bytes starting with <paramref name="value"/> and opens its payload (what follows its header in <paramref name="value"/>, else already in the destination).</summary>
    private static string? Open(ReadOnlySpan<byte> value, long valueLength, SlotPoolIdentity identity, CacheSecret secret, ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination)
    {
        if (ChunkRecord.Check(value, StoredFormats.RemoteValue, identity, secret, identity.ChunkTokens, out var fields) is { } failure) return failure;
        int header = BinaryPrimitives.ReadInt32LittleEndian(value[StoredFormats.RvHeaderBytes..]);
        if (header != StoredFormats.RemoteValue.Length(fields.TokenCount)) return "header length differs from its token count";
        if (fields.Key != key) return "another chunk's entry (key)";
        if (!ChunkRecord.TokensEqual(value, StoredFormats.RemoteValue, fields, secret, tokens)) return "token ids differ";
        if (fields.PayloadLength != destination.Length) return $"payload of {fields.PayloadLength} bytes, expected {destination.Length}";
        if (valueLength - header != fields.PayloadLength) return $"truncated payload ({valueLength - header} of {fields.PayloadLength} bytes)";
        bool inPlace = valueLength != value.Length;
        if (inPlace && value.Length != header) return $"header of {header} bytes, {value.Length} received apart from the payload";
        var stored = inPlace ? destination : value[header..];
        if (PayloadSeal.OpenInto(stored, destination, ChunkRecord.SealOf(fields, secret)) != fields.PayloadTag) return "payload tag mismatch (damaged or forged)";
        return null;
    }
}
