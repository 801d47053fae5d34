using System.Buffers.Binary;
using System.IO.Hashing;
using System.Runtime.InteropServices;
using System.Text;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Keys;

/// <summary>
/// Chained chunk keys: <c>key(0) = H(root ‖ tokens of chunk 0)</c>, <c>key(i) = H(key(i-1) ‖ tokens of chunk i)</c>,
/// tokens as u32 little-endian, H = XxHash128, root = H(domain ‖ model fingerprint ‖ chunk length ‖ salt).
/// A key names a whole prefix, so equal keys mean equal prefixes (token ids are compared on every
/// hit as well). The same on every process and machine.
/// </summary>
internal sealed class ChunkChain
{
    private const string Domain = "ortkvtier/chunk-chain/v1";

    /// <summary>Creates the chain for a model fingerprint, a chunk length and an optional salt (for example a tenant id).</summary>
    public ChunkChain(ModelFingerprint fingerprint, int chunkTokens, string? salt = null)
    {
        if (chunkTokens < 1 || chunkTokens > 65536)
            throw new ArgumentOutOfRangeException(nameof(chunkTokens), chunkTokens, "Chunk length must be between 1 and 65536 tokens.");
        ChunkTokens = chunkTokens;
        Salt = salt ?? "";
        var hash = new XxHash128();
        hash.Append(Encoding.UTF8.GetBytes(Domain));
        Span<byte> fields = stackalloc byte[20];
        BinaryPrimitives.WriteUInt128LittleEndian(fields, fingerprint.Value);
        BinaryPrimitives.WriteInt32LittleEndian(fields[16..], chunkTokens);
        hash.Append(fields);
        hash.Append(Encoding.UTF8.GetBytes(Salt));
        Root = new ChunkKey(hash.GetCurrentHashAsUInt128());
    }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkTokens { get; }

    /// <summary>The salt mixed into the root ("" when none).</summary>
    public string Salt { get; }

    /// <summary>The key before the first chunk.</summary>
    public ChunkKey Root { get; }

    /// <summary>Full chunks in <paramref name="tokenCount"/> tokens.</summary>
    public int FullChunks(int tokenCount) => tokenCount / ChunkTokens;

    /// <summary>The key of the chunk holding <paramref name="chunkTokens"/> after the chunk keyed <paramref name="previous"/>.</summary>
    public static ChunkKey Next(ChunkKey previous, ReadOnlySpan<int> chunkTokens)
    {
        var hash = new XxHash128();
        Span<byte> head = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(head, previous.Value);
        hash.Append(head);
        if (BitConverter.IsLittleEndian) hash.Append(MemoryMarshal.AsBytes(chunkTokens));
        else
        {
            Span<byte> word = stackalloc byte[4];
            foreach (var t in chunkTokens)
            {
                BinaryPrimitives.WriteInt32LittleEndian(word, t);
                hash.Append(word);
            }
        }
        return new ChunkKey(hash.GetCurrentHashAsUInt128());
    }

    /// <summary>Keys of every full chunk of <paramref name="tokens"/>, in order.</summary>
    public ChunkKey[] Keys(ReadOnlySpan<int> tokens)
    {
        var keys = new ChunkKey[FullChunks(tokens.Length)];
        var previous = Root;
        for (int i = 0; i < keys.Length; i++)
            keys[i] = previous = Next(previous, tokens.Slice(i * ChunkTokens, ChunkTokens));
        return keys;
    }

    /// <summary>Appends to <paramref name="keys"/> the keys of full chunks of <paramref name="tokens"/> it does not hold yet.</summary>
    public void Extend(List<ChunkKey> keys, ReadOnlySpan<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(keys);
        int chunks = FullChunks(tokens.Length);
        for (int i = keys.Count; i < chunks; i++)
            keys.Add(Next(i == 0 ? Root : keys[i - 1], tokens.Slice(i * ChunkTokens, ChunkTokens)));
    }
}
