using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using Blake3;

namespace OrtKvTier.Security;

/// <summary>
/// The cache's secret key and the keys derived from it (BLAKE3 key derivation, one context per use): chunk keys
/// (<see cref="ChainHash"/>, so nobody without the key can compute which prompt a stored entry names), record
/// MACs (<see cref="Mac"/>: slot headers, remote value headers, journal records, snapshots) and per-entry payload
/// keys (<see cref="SealFor"/>). Whoever lacks the key can neither forge an entry nor tell which prompt it holds;
/// a process with another key misses every entry and touches none.
/// </summary>
internal sealed class CacheSecret
{
    /// <summary>Bytes of a generated key.</summary>
    public const int KeyBytes = 32;
    /// <summary>Shortest key accepted.</summary>
    public const int MinKeyBytes = 16;

    private readonly byte[] _chainKey, _recordKey, _payloadMacKey, _payloadCipherKey;

    public CacheSecret(ReadOnlySpan<byte> key)
    {
        if (key.Length < MinKeyBytes)
            throw new ArgumentException($"A cache key needs at least {MinKeyBytes} bytes ({KeyBytes} recommended, random); got {key.Length}.", nameof(key));
        _chainKey = Derive(key, "OrtKvTier 2026 chunk chain keys");
        _recordKey = Derive(key, "OrtKvTier 2026 record MAC");
        _payloadMacKey = Derive(key, "OrtKvTier 2026 payload MAC");
        _payloadCipherKey = Derive(key, "OrtKvTier 2026 payload cipher");
        KeyId = Convert.ToHexStringLower(Derive(key, "OrtKvTier 2026 key id")[..6]);
    }

    /// <summary>A fresh random key (for a process that has none to share: its entries are its own).</summary>
    public static CacheSecret CreateRandom() => new(RandomNumberGenerator.GetBytes(KeyBytes));

    /// <summary>Parses a key written as hex or base64 (for example from <c>ORTKV_CACHE_KEY</c>).</summary>
    public static CacheSecret Parse(string text, string source) => new(ParseKeyBytes(text, source));

    /// <summary>The bytes of a key written as hex or base64; <paramref name="source"/> names where it came from in errors.</summary>
    public static byte[] ParseKeyBytes(string text, string source)
    {
        text = text.Trim();
        byte[] bytes;
        try
        {
            bytes = text.Length % 2 == 0 && text.All(char.IsAsciiHexDigit) ? Convert.FromHexString(text) : Convert.FromBase64String(text);
        }
        catch (FormatException)
        {
            throw new ArgumentException($"{source} is neither hex nor base64. Expected {KeyBytes} random bytes, for example from `openssl rand -hex 32`.");
        }
        if (bytes.Length < MinKeyBytes)
            throw new ArgumentException($"{source} holds {bytes.Length} bytes; a cache key needs at least {MinKeyBytes} ({KeyBytes} recommended, from `openssl rand -hex 32`).");
        return bytes;
    }

    /// <summary>Names the key without revealing it: 12 hex digits, part of pool directory names, so processes with different keys never share (or damage) a pool.</summary>
    public string KeyId { get; }

    /// <summary>The 128-bit MAC of <paramref name="bytes"/> (keyed BLAKE3).</summary>
    public UInt128 Mac(ReadOnlySpan<byte> bytes) => Keyed128(_recordKey, bytes);

    /// <summary>The key of the chunk holding <paramref name="tokens"/> after the chunk keyed <paramref name="previous"/> (keyed BLAKE3 of both, tokens as u32 little-endian).</summary>
    public UInt128 ChainHash(UInt128 previous, ReadOnlySpan<int> tokens)
    {
        using var hasher = Hasher.NewKeyed(_chainKey);
        Span<byte> head = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(head, previous);
        hasher.Update(head);
        hasher.Update(TokenBytes.AsLittleEndian(tokens, stackalloc byte[BitConverter.IsLittleEndian ? 0 : 4 * tokens.Length]));
        return Finalize128(hasher);
    }

    /// <summary>The root of a chain: keyed BLAKE3 of length-prefixed fields (so no two field lists hash alike).</summary>
    public UInt128 ChainRoot(ReadOnlySpan<byte> fixedFields, params ReadOnlySpan<string> texts)
    {
        using var hasher = Hasher.NewKeyed(_chainKey);
        hasher.Update(fixedFields);
        Span<byte> length = stackalloc byte[4];
        foreach (var text in texts)
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            BinaryPrimitives.WriteInt32LittleEndian(length, bytes.Length);
            hasher.Update(length);
            hasher.Update(bytes);
        }
        return Finalize128(hasher);
    }

    /// <summary>The seal of one stored entry, from the entry's random nonce: its own MAC and cipher keys.</summary>
    public EntrySeal SealFor(UInt128 entryNonce, bool encrypted)
    {
        Span<byte> nonce = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(nonce, entryNonce);
        return new EntrySeal(Keyed(_payloadMacKey, nonce), encrypted ? Keyed(_payloadCipherKey, nonce) : null);
    }

    /// <summary>A new random entry nonce.</summary>
    public static UInt128 NewEntryNonce()
    {
        Span<byte> bytes = stackalloc byte[16];
        RandomNumberGenerator.Fill(bytes);
        return BinaryPrimitives.ReadUInt128LittleEndian(bytes);
    }

    private static byte[] Derive(ReadOnlySpan<byte> key, string context)
    {
        using var hasher = Hasher.NewDeriveKey(context);
        hasher.Update(key);
        var derived = new byte[KeyBytes];
        hasher.Finalize(derived);
        return derived;
    }

    private static byte[] Keyed(byte[] key, ReadOnlySpan<byte> bytes)
    {
        using var hasher = Hasher.NewKeyed(key);
        hasher.Update(bytes);
        var output = new byte[KeyBytes];
        hasher.Finalize(output);
        return output;
    }

    internal static UInt128 Keyed128(byte[] key, ReadOnlySpan<byte> bytes)
    {
        using var hasher = Hasher.NewKeyed(key);
        hasher.Update(bytes);
        return Finalize128(hasher);
    }

    private static UInt128 Finalize128(Hasher hasher)
    {
        Span<byte> tag = stackalloc byte[16];
        hasher.Finalize(tag);
        return BinaryPrimitives.ReadUInt128LittleEndian(tag);
    }
}

/// <summary>Token ids as the u32 little-endian bytes everything stores and hashes.</summary>
internal static class TokenBytes
{
    /// <summary>The bytes of <paramref name="tokens"/>: the ids' own memory on little-endian machines, else written into <paramref name="scratch"/>.</summary>
    public static ReadOnlySpan<byte> AsLittleEndian(ReadOnlySpan<int> tokens, Span<byte> scratch)
    {
        if (BitConverter.IsLittleEndian) return System.Runtime.InteropServices.MemoryMarshal.AsBytes(tokens);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(scratch[(4 * i)..], tokens[i]);
        return scratch[..(4 * tokens.Length)];
    }
}
