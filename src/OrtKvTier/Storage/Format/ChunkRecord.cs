using System.Buffers.Binary;
using System.Runtime.InteropServices;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>What a chunk record's header says about its payload.</summary>
internal readonly record struct ChunkRecordFields(ChunkKey Key, int TokenCount, long PayloadLength, UInt128 PayloadTag, UInt128 EntryNonce, RecordFlags Flags)
{
    public bool Encrypted => (Flags & RecordFlags.Encrypted) != 0;
}

/// <summary>A payload as sealed for storing: its length, tag, the entry nonce its keys come from, and the seal itself.</summary>
internal sealed record SealedPayload(long Length, UInt128 Tag, UInt128 EntryNonce, EntrySeal Seal);

/// <summary>
/// The authenticated header that names a stored chunk, in every format that holds one (a slot header, a remote
/// value; <see cref="ChunkRecordFormat"/> says where each field is): magic, version, the key, the model fingerprint,
/// the layout hash, flags, the token count and ids (encrypted when the flags say so), the payload's length and tag,
/// the entry nonce, and a MAC of the header under the cache's secret. A header that does not check out names
/// nothing: the caller treats it as a miss.
/// </summary>
internal static class ChunkRecord
{
    /// <summary>
    /// Writes the record's fields and token ids into <paramref name="header"/> (cleared first), then the MAC, which
    /// also covers what <paramref name="writeOwnFields"/> wrote (a format's own fields). Returns the header's length.
    /// </summary>
    public static int Write(Span<byte> header, ChunkRecordFormat format, SlotPoolIdentity identity, CacheSecret secret, ChunkKey key,
        ReadOnlySpan<int> tokens, SealedPayload payload, SpanAction<byte>? writeOwnFields = null)
    {
        header[..format.Length(tokens.Length)].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(header[ChunkRecordFormat.MagicAt..], format.Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header[ChunkRecordFormat.VersionAt..], format.Version);
        WriteUInt128(header[format.Key..], key.Value);
        WriteUInt128(header[format.Fingerprint..], identity.Fingerprint.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(header[format.LayoutHash..], identity.LayoutHash);
        BinaryPrimitives.WriteInt32LittleEndian(header[format.TokenCount..], tokens.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(header[format.Flags..], (uint)(payload.Seal.Encrypted ? RecordFlags.Encrypted : RecordFlags.None));
        BinaryPrimitives.WriteInt64LittleEndian(header[format.PayloadLength..], payload.Length);
        WriteUInt128(header[format.PayloadTag..], payload.Tag);
        WriteUInt128(header[format.EntryNonce..], payload.EntryNonce);
        var tokenBytes = header.Slice(format.Tokens, 4 * tokens.Length);
        TokenBytes.AsLittleEndian(tokens, tokenBytes).CopyTo(tokenBytes);
        payload.Seal.CryptTokens(tokenBytes);
        writeOwnFields?.Invoke(header);
        int macAt = format.MacAt(tokens.Length);
        WriteUInt128(header[macAt..], secret.Mac(header[..macAt]));
        return macAt + MacBytes;
    }

    /// <summary>A span writer for <see cref="Write"/>.</summary>
    public delegate void SpanAction<T>(Span<T> span);

    /// <summary>
    /// Why <paramref name="header"/> is not an authentic record of <paramref name="format"/> for <paramref name="identity"/>
    /// with at most <paramref name="maxTokens"/> ids, or null with its <paramref name="fields"/>. The key and the
    /// token ids are the caller's to compare (<see cref="TokensEqual"/>).
    /// </summary>
    public static string? Check(ReadOnlySpan<byte> header, ChunkRecordFormat format, SlotPoolIdentity identity, CacheSecret secret, int maxTokens, out ChunkRecordFields fields)
    {
        fields = default;
        if (header.Length < format.Length(0)) return $"{header.Length} bytes is shorter than a header";
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[ChunkRecordFormat.MagicAt..]) != format.Magic) return "no record header (never written, overwritten, or not an OrtKvTier value)";
        if (BinaryPrimitives.ReadUInt32LittleEndian(header[ChunkRecordFormat.VersionAt..]) is var version && version != format.Version)
            return VersionMismatch("the record", version, format.Version);
        int tokenCount = BinaryPrimitives.ReadInt32LittleEndian(header[format.TokenCount..]);
        if (tokenCount < 0 || tokenCount > maxTokens || format.Length(tokenCount) > header.Length) return $"token count {tokenCount} out of range";
        int macAt = format.MacAt(tokenCount);
        if (ReadUInt128(header[macAt..]) != secret.Mac(header[..macAt])) return "header MAC mismatch (damaged, forged, or written under another cache key)";
        if (ReadUInt128(header[format.Fingerprint..]) != identity.Fingerprint.Value) return "model fingerprint differs (another model's entry)";
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[format.LayoutHash..]) != identity.LayoutHash) return "layout or chunk length differs";
        var flags = (RecordFlags)BinaryPrimitives.ReadUInt32LittleEndian(header[format.Flags..]);
        if ((flags & ~RecordFlags.Encrypted) != 0) return $"unknown flags {(uint)flags:x}";
        fields = new ChunkRecordFields(new ChunkKey(ReadUInt128(header[format.Key..])), tokenCount,
            BinaryPrimitives.ReadInt64LittleEndian(header[format.PayloadLength..]), ReadUInt128(header[format.PayloadTag..]),
            ReadUInt128(header[format.EntryNonce..]), flags);
        return null;
    }

    /// <summary>The seal a checked record's payload was stored with.</summary>
    public static EntrySeal SealOf(ChunkRecordFields fields, CacheSecret secret) => secret.SealFor(fields.EntryNonce, fields.Encrypted);

    /// <summary>The token ids of a checked header, decrypted.</summary>
    public static int[] Tokens(ReadOnlySpan<byte> header, ChunkRecordFormat format, ChunkRecordFields fields, CacheSecret secret)
    {
        var tokens = new int[fields.TokenCount];
        var bytes = MemoryMarshal.AsBytes(tokens.AsSpan());
        header.Slice(format.Tokens, bytes.Length).CopyTo(bytes);
        SealOf(fields, secret).CryptTokens(bytes);
        if (!BitConverter.IsLittleEndian)
            for (int i = 0; i < tokens.Length; i++) tokens[i] = BinaryPrimitives.ReverseEndianness(tokens[i]);
        return tokens;
    }

    /// <summary>Whether a checked header's token ids equal <paramref name="tokens"/>.</summary>
    public static bool TokensEqual(ReadOnlySpan<byte> header, ChunkRecordFormat format, ChunkRecordFields fields, CacheSecret secret, ReadOnlySpan<int> tokens)
    {
        if (fields.TokenCount != tokens.Length) return false;
        var stored = header.Slice(format.Tokens, 4 * tokens.Length);
        var expected = TokenBytes.AsLittleEndian(tokens, BitConverter.IsLittleEndian ? default : new byte[stored.Length]);
        if (!fields.Encrypted) return stored.SequenceEqual(expected);
        Span<byte> plain = stored.Length <= 4096 ? stackalloc byte[stored.Length] : new byte[stored.Length];
        stored.CopyTo(plain);
        SealOf(fields, secret).CryptTokens(plain);
        return plain.SequenceEqual(expected);
    }
}
