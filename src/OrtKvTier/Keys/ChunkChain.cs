using System.Buffers.Binary;
using OrtKvTier.Model;
using OrtKvTier.Security;

namespace OrtKvTier.Keys;

/// <summary>
/// Chained chunk keys: <c>key(0) = H(root ‖ tokens of chunk 0)</c>, <c>key(i) = H(key(i-1) ‖ tokens of chunk i)</c>,
/// tokens as u32 little-endian, H = BLAKE3 keyed by the cache's secret (<see cref="CacheSecret.ChainHash"/>), root =
/// H(domain ‖ model fingerprint ‖ chunk length ‖ salt ‖ tenant). A key names a whole prefix, so equal keys mean equal
/// prefixes (token ids are compared on every hit as well). The same on every process that shares the key; without
/// the key nobody can tell which prompt a key names, and two tenants never compute each other's keys.
/// </summary>
internal sealed class ChunkChain
{
    private const string Domain = "ortkvtier/chunk-chain/v2";
    /// <summary>Documents computed on their own, to be placed anywhere in a prompt: keys of their own, never a prompt prefix's.</summary>
    private const string DocumentDomain = "ortkvtier/document-chain/v1";
    private readonly CacheSecret _secret;

    /// <summary>Creates the chain for a model fingerprint, a chunk length, the cache's secret, an optional cache-wide salt and an optional tenant.</summary>
    public ChunkChain(ModelFingerprint fingerprint, int chunkTokens, CacheSecret secret, string? salt = null, string? tenant = null)
        : this(fingerprint, chunkTokens, secret, salt, tenant, document: false) { }

    /// <summary>The chain of documents (their KV computed from position 0 on their own) for a model, salt and tenant.</summary>
    internal static ChunkChain ForDocuments(ModelFingerprint fingerprint, int chunkTokens, CacheSecret secret, string? salt, string? tenant) =>
        new(fingerprint, chunkTokens, secret, salt, tenant, document: true);

    private ChunkChain(ModelFingerprint fingerprint, int chunkTokens, CacheSecret secret, string? salt, string? tenant, bool document)
    {
        if (chunkTokens < 1 || chunkTokens > 65536)
            throw new ArgumentOutOfRangeException(nameof(chunkTokens), chunkTokens, "Chunk length must be between 1 and 65536 tokens.");
        ArgumentNullException.ThrowIfNull(secret);
        _secret = secret;
        ChunkTokens = chunkTokens;
        Salt = salt ?? "";
        Tenant = tenant ?? "";
        Span<byte> fields = stackalloc byte[20];
        BinaryPrimitives.WriteUInt128LittleEndian(fields, fingerprint.Value);
        BinaryPrimitives.WriteInt32LittleEndian(fields[16..], chunkTokens);
        Root = new ChunkKey(secret.ChainRoot(fields, document ? DocumentDomain : Domain, Salt, Tenant));
    }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkTokens { get; }

    /// <summary>The cache-wide salt mixed into the root ("" when none).</summary>
    public string Salt { get; }

    /// <summary>The tenant mixed into the root ("" when none).</summary>
    public string Tenant { get; }

    /// <summary>The key before the first chunk.</summary>
    public ChunkKey Root { get; }

    /// <summary>Full chunks in <paramref name="tokenCount"/> tokens.</summary>
    public int FullChunks(int tokenCount) => tokenCount / ChunkTokens;

    /// <summary>The key of the chunk holding <paramref name="chunkTokens"/> after the chunk keyed <paramref name="previous"/>.</summary>
    public ChunkKey Next(ChunkKey previous, ReadOnlySpan<int> chunkTokens) => new(_secret.ChainHash(previous.Value, chunkTokens));

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
