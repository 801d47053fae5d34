using System.Buffers.Binary;
using System.Text;
using OrtKvTier.Cache;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;

namespace OrtKvTier.Tests.Cache;

public sealed class ChunkChainTests
{
    private static readonly ModelFingerprint Model = new(new UInt128(0x0123456789abcdefUL, 0xfedcba9876543210UL));
    private static readonly byte[] KeyBytes = Enumerable.Range(0, 32).Select(i => (byte)(200 - i)).ToArray();
    private static readonly CacheSecret Secret = new(KeyBytes);

    [Fact]
    public void KeysAreTheDocumentedFormatSoEveryProcessWithTheKeyAgrees()
    {
        // Pinned values: changing the key format orphans every cache, so it must be a deliberate change.
        var keys = new ChunkChain(Model, 4, Secret).Keys([1, 2, 3, 4, 5, 6, 7, 8, 9]);
        Assert.Equal(2, keys.Length);
        Assert.Equal("9ae3bf5d68af5f1dd918ca0f806c9d3c", keys[0].ToString());

        // By the documented recipe: K = BLAKE3-derive-key("OrtKvTier 2026 chunk chain keys", cache key);
        // root = BLAKE3-keyed(K, fingerprint u128 LE ‖ chunk length i32 LE ‖ for each of domain, salt, tenant: length i32 LE ‖ UTF-8)[..16].
        var chainKey = new byte[32];
        using (var derive = Blake3.Hasher.NewDeriveKey("OrtKvTier 2026 chunk chain keys"))
        {
            derive.Update(KeyBytes);
            derive.Finalize(chainKey);
        }
        var root = new List<byte>(new byte[20]);
        BinaryPrimitives.WriteUInt128LittleEndian(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(root), Model.Value);
        BinaryPrimitives.WriteInt32LittleEndian(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(root)[16..], 4);
        foreach (var text in new[] { "ortkvtier/chunk-chain/v2", "", "" })
        {
            var bytes = Encoding.UTF8.GetBytes(text);
            root.AddRange(BitConverter.GetBytes(bytes.Length));
            root.AddRange(bytes);
        }
        var chain = new ChunkChain(Model, 4, Secret);
        Assert.Equal(new ChunkKey(Keyed(chainKey, [.. root])), chain.Root);
        Assert.Equal(Documented(chainKey, chain.Root, [1, 2, 3, 4]), keys[0]);
        Assert.Equal(Documented(chainKey, keys[0], [5, 6, 7, 8]), keys[1]);
    }

    /// <summary>key(i) = BLAKE3-keyed(K, key(i-1) as u128 LE ‖ tokens as u32 LE)[..16].</summary>
    private static ChunkKey Documented(byte[] chainKey, ChunkKey previous, int[] tokens)
    {
        var bytes = new byte[16 + 4 * tokens.Length];
        BinaryPrimitives.WriteUInt128LittleEndian(bytes, previous.Value);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(16 + 4 * i), (uint)tokens[i]);
        return new ChunkKey(Keyed(chainKey, bytes));
    }

    private static UInt128 Keyed(byte[] key, byte[] bytes)
    {
        using var hasher = Blake3.Hasher.NewKeyed(key);
        hasher.Update(bytes);
        var tag = new byte[16];
        hasher.Finalize(tag);
        return BinaryPrimitives.ReadUInt128LittleEndian(tag);
    }

    [Fact]
    public void AKeyNamesTheWholePrefixTheModelTheChunkLengthTheSaltTheTenantAndTheCacheKey()
    {
        var chain = new ChunkChain(Model, 4, Secret);
        var a = chain.Keys([1, 2, 3, 4, 5, 6, 7, 8]);
        var b = chain.Keys([9, 2, 3, 4, 5, 6, 7, 8]);
        Assert.NotEqual(a[0], b[0]);
        Assert.NotEqual(a[1], b[1]); // same second chunk, different prefix
        Assert.Equal(a, chain.Keys([1, 2, 3, 4, 5, 6, 7, 8, 100, 101])); // partial chunks have no key
        Assert.NotEqual(a[0], new ChunkChain(new ModelFingerprint(1), 4, Secret).Keys([1, 2, 3, 4])[0]);
        Assert.NotEqual(new ChunkChain(Model, 4, Secret).Root, new ChunkChain(Model, 8, Secret).Root);
        Assert.NotEqual(a[0], new ChunkChain(Model, 4, CacheSecret.CreateRandom()).Keys([1, 2, 3, 4])[0]);

        // Salt and tenant are separate, length-prefixed fields: no two combinations collide.
        var roots = new[] { ("", ""), ("a", ""), ("", "a"), ("a", "b"), ("ab", ""), ("", "ab"), ("a", "ab") }
            .Select(p => new ChunkChain(Model, 4, Secret, p.Item1, p.Item2).Root).ToList();
        Assert.Equal(roots.Count, roots.Distinct().Count());

        var extended = new List<ChunkKey>();
        chain.Extend(extended, [1, 2, 3, 4, 5]);
        chain.Extend(extended, [1, 2, 3, 4, 5, 6, 7, 8]);
        Assert.Equal(a, extended);
    }

    [Fact]
    public void ChunkLengthOutOfRangeIsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkChain(Model, 0, Secret));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PrefixCacheOptions { ChunkTokens = 70000 }.Validate());
    }
}
