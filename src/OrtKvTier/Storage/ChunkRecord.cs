using System.Buffers.Binary;
using System.Runtime.InteropServices;
using OrtKvTier.Keys;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>What a chunk record's header says about its payload.</summary>
internal readonly record struct ChunkRecordFields(ChunkKey Key, int TokenCount, long PayloadLength, UInt128 PayloadChecksum);

/// <summary>
/// The self-verifying header that names a stored chunk, in every format that holds one (a slot header, a
/// remote value; <see cref="ChunkRecordFormat"/> says where each field is): magic, version, the key, the model
/// fingerprint, the layout hash, the token count and ids, the payload's length and checksum, and a checksum
/// of the header itself. A header that does not check out names nothing: the caller treats it as a miss.
/// </summary>
internal static class ChunkRecord
{
    /// <summary>
    /// Writes the record's fields and token ids into <paramref name="header"/> (cleared first), then the header
    /// checksum, which also covers what <paramref name="writeOwnFields"/> wrote (a format's own fields). Returns
    /// the header's length.
    /// </summary>
    public static int Write(Span<byte> header, ChunkRecordFormat format, SlotPoolIdentity identity, ChunkKey key, ReadOnlySpan<int> tokens,
        long payloadLength, UInt128 payloadChecksum, SpanAction<byte>? writeOwnFields = null)
    {
        header[..format.Length(tokens.Length)].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(header[ChunkRecordFormat.MagicAt..], format.Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(header[ChunkRecordFormat.VersionAt..], format.Version);
        WriteUInt128(header[format.Key..], key.Value);
        WriteUInt128(header[format.Fingerprint..], identity.Fingerprint.Value);
        BinaryPrimitives.WriteUInt64LittleEndian(header[format.LayoutHash..], identity.LayoutHash);
        BinaryPrimitives.WriteInt32LittleEndian(header[format.TokenCount..], tokens.Length);
        BinaryPrimitives.WriteInt64LittleEndian(header[format.PayloadLength..], payloadLength);
        WriteUInt128(header[format.PayloadChecksum..], payloadChecksum);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(header[(format.Tokens + 4 * i)..], tokens[i]);
        writeOwnFields?.Invoke(header);
        int checksumAt = format.ChecksumAt(tokens.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(header[checksumAt..], Checksum64(header[..checksumAt]));
        return checksumAt + 8;
    }

    /// <summary>A span writer for <see cref="Write"/>.</summary>
    public delegate void SpanAction<T>(Span<T> span);

    /// <summary>
    /// Why <paramref name="header"/> is not a valid record of <paramref name="format"/> for <paramref name="identity"/>
    /// with at most <paramref name="maxTokens"/> ids, or null with its <paramref name="fields"/>. The key and the
    /// token ids are the caller's to compare (<see cref="TokensEqual"/>).
    /// </summary>
    public static string? Check(ReadOnlySpan<byte> header, ChunkRecordFormat format, SlotPoolIdentity identity, int maxTokens, out ChunkRecordFields fields)
    {
        fields = default;
        if (header.Length < format.Length(0)) return $"{header.Length} bytes is shorter than a header";
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[ChunkRecordFormat.MagicAt..]) != format.Magic) return "no record header (never written, overwritten, or not an OrtKvTier value)";
        if (BinaryPrimitives.ReadUInt32LittleEndian(header[ChunkRecordFormat.VersionAt..]) != format.Version) return "format version differs";
        int tokenCount = BinaryPrimitives.ReadInt32LittleEndian(header[format.TokenCount..]);
        if (tokenCount < 0 || tokenCount > maxTokens || format.Length(tokenCount) > header.Length) return $"token count {tokenCount} out of range";
        int checksumAt = format.ChecksumAt(tokenCount);
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[checksumAt..]) != Checksum64(header[..checksumAt])) return "header checksum mismatch";
        if (ReadUInt128(header[format.Fingerprint..]) != identity.Fingerprint.Value) return "model fingerprint differs (another model's entry)";
        if (BinaryPrimitives.ReadUInt64LittleEndian(header[format.LayoutHash..]) != identity.LayoutHash) return "layout or chunk length differs";
        fields = new ChunkRecordFields(new ChunkKey(ReadUInt128(header[format.Key..])), tokenCount,
            BinaryPrimitives.ReadInt64LittleEndian(header[format.PayloadLength..]), ReadUInt128(header[format.PayloadChecksum..]));
        return null;
    }

    /// <summary>The first <paramref name="count"/> token ids of a header.</summary>
    public static int[] Tokens(ReadOnlySpan<byte> header, ChunkRecordFormat format, int count)
    {
        var tokens = new int[count];
        for (int i = 0; i < count; i++) tokens[i] = BinaryPrimitives.ReadInt32LittleEndian(header[(format.Tokens + 4 * i)..]);
        return tokens;
    }

    /// <summary>Whether a checked header's token ids equal <paramref name="tokens"/>.</summary>
    public static bool TokensEqual(ReadOnlySpan<byte> header, ChunkRecordFormat format, ReadOnlySpan<int> tokens)
    {
        if (BinaryPrimitives.ReadInt32LittleEndian(header[format.TokenCount..]) != tokens.Length) return false;
        var stored = header.Slice(format.Tokens, 4 * tokens.Length);
        if (BitConverter.IsLittleEndian) return MemoryMarshal.Cast<byte, int>(stored).SequenceEqual(tokens);
        for (int i = 0; i < tokens.Length; i++)
            if (BinaryPrimitives.ReadInt32LittleEndian(stored[(4 * i)..]) != tokens[i]) return false;
        return true;
    }
}
