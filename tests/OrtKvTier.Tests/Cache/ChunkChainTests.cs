using System.Buffers.Binary;
using System.IO.Hashing;
using System.Text;
using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Tests.Cache;

public sealed class ChunkChainTests
{
    private static readonly ModelFingerprint Model = new(new UInt128(0x0123456789abcdefUL, 0xfedcba9876543210UL));

    [Fact]
    public void KeysAreTheDocumentedFormatSoEveryProcessAndMachineAgrees()
    {
        // Pinned values: changing the key format orphans every cache on disk, so it must be a deliberate change.
        var keys = new ChunkChain(Model, 4).Keys([1, 2, 3, 4, 5, 6, 7, 8, 9]);
        Assert.Equal(2, keys.Length);
        Assert.Equal("86e60d7a1c63a4831611d377c0467706", keys[0].ToString());
        Assert.Equal(Documented(keys[0], [5, 6, 7, 8]), keys[1]);

        // The root, by the documented recipe: H("ortkvtier/chunk-chain/v1" ‖ fingerprint u128 LE ‖ chunk length i32 LE ‖ salt UTF-8).
        var root = new byte[24 + 16 + 4];
        Encoding.UTF8.GetBytes("ortkvtier/chunk-chain/v1").CopyTo(root, 0);
        BinaryPrimitives.WriteUInt128LittleEndian(root.AsSpan(24), Model.Value);
        BinaryPrimitives.WriteInt32LittleEndian(root.AsSpan(40), 4);
        Assert.Equal(new ChunkKey(XxHash128.HashToUInt128(root)), new ChunkChain(Model, 4).Root);
        Assert.Equal(Documented(new ChunkChain(Model, 4).Root, [1, 2, 3, 4]), keys[0]);
    }

    /// <summary>key(i) = H(key(i-1) as u128 LE ‖ tokens as u32 LE).</summary>
    private static ChunkKey Documented(ChunkKey previous, int[] tokens)
    {
        var bytes = new byte[16 + 4 * tokens.Length];
        BinaryPrimitives.WriteUInt128LittleEndian(bytes, previous.Value);
        for (int i = 0; i < tokens.Length; i++) BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(16 + 4 * i), (uint)tokens[i]);
        return new ChunkKey(XxHash128.HashToUInt128(bytes));
    }

    [Fact]
    public void AKeyNamesTheWholePrefixTheModelTheChunkLengthAndTheSalt()
    {
        var chain = new ChunkChain(Model, 4);
        var a = chain.Keys([1, 2, 3, 4, 5, 6, 7, 8]);
        var b = chain.Keys([9, 2, 3, 4, 5, 6, 7, 8]);
        Assert.NotEqual(a[0], b[0]);
        Assert.NotEqual(a[1], b[1]); // same second chunk, different prefix
        Assert.Equal(a, chain.Keys([1, 2, 3, 4, 5, 6, 7, 8, 100, 101])); // partial chunks have no key
        Assert.NotEqual(a[0], new ChunkChain(new ModelFingerprint(1), 4).Keys([1, 2, 3, 4])[0]);
        Assert.NotEqual(a[0], new ChunkChain(Model, 4, salt: "tenant-a").Keys([1, 2, 3, 4])[0]);
        Assert.NotEqual(new ChunkChain(Model, 4).Root, new ChunkChain(Model, 8).Root);

        var extended = new List<ChunkKey>();
        chain.Extend(extended, [1, 2, 3, 4, 5]);
        chain.Extend(extended, [1, 2, 3, 4, 5, 6, 7, 8]);
        Assert.Equal(a, extended);
    }

    [Fact]
    public void ChunkLengthOutOfRangeIsRefused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkChain(Model, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PrefixCacheOptions { ChunkTokens = 70000 }.Validate());
    }
}
