using System.Runtime.InteropServices;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// Pools that store KV encoded: they take and give whole chunks in the model's layout, store them smaller, authenticate
/// what they store, and are never read as another encoding.
/// </summary>
public sealed unsafe class EncodedPoolTests : IDisposable
{
    private readonly TempDir _temp = new();
    private static readonly SlotPoolIdentity Exact = TestPayloads.Identity;
    private static readonly SlotPoolIdentity Int8 = Exact with { Encoding = KvEncoding.Int8 };

    private SlotPool Open(SlotPoolIdentity identity, MismatchPolicy onMismatch = MismatchPolicy.Recreate) => SlotPool.Open(new SlotPoolOptions
    {
        Directory = _temp.Path, Identity = identity, CapacitySlots = 8, Durability = Durability.None, OnMismatch = onMismatch,
    });

    /// <summary>A chunk of fp16 values in [-4, 4) from the key.</summary>
    private static byte[] Chunk(ChunkKey key)
    {
        var random = new Random((int)(ulong)key.Value);
        var values = new Half[Exact.ExactPayloadBytes / 2];
        for (int i = 0; i < values.Length; i++) values[i] = (Half)(random.NextSingle() * 8 - 4);
        return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    private static byte[] Decoded(byte[] exact)
    {
        var codec = KvCodec.For(KvEncoding.Int8, Exact.Shape, Exact.ChunkTokens)!;
        var encoded = new byte[codec.EncodedBytes];
        Assert.True(codec.Encode(exact, encoded));
        var decoded = new byte[exact.Length];
        fixed (byte* d = decoded) codec.Decode(encoded, PayloadScatter.Contiguous(d, decoded.Length));
        return decoded;
    }

    [Fact]
    public void AnInt8PoolStoresAboutHalfTheBytesAndGivesBackTheDecodedChunk()
    {
        using var pool = Open(Int8);
        var key = TestPayloads.Key(1, 1);
        var chunk = Chunk(key);
        Assert.True(pool.Put(key, TestPayloads.Tokens(key), chunk));
        var read = new byte[chunk.Length];
        Assert.True(pool.TryGet(key, TestPayloads.Tokens(key), read, out int length));
        Assert.Equal(chunk.Length, length);
        Assert.Equal(Decoded(chunk), read);
        Assert.NotEqual(chunk, read); // approximate, not exact
        Assert.InRange((double)pool.GetStats().PayloadBytes / chunk.Length, 0.5, 0.55);
        Assert.InRange((double)pool.SlotBytes / SlotPool.Open(new SlotPoolOptions { Directory = _temp.Sub("exact"), Identity = Exact, CapacitySlots = 2 }).SlotBytes, 0.5, 0.6);
        Assert.EndsWith("stored int8", pool.Identity.LayoutText);
    }

    [Fact]
    public void ADamagedEncodedPayloadIsAMissAndIsDropped()
    {
        var key = TestPayloads.Key(1, 2);
        using (var pool = Open(Int8)) Assert.True(pool.Put(key, TestPayloads.Tokens(key), Chunk(key)));
        using (var file = new FileStream(Path.Combine(_temp.Path, StoredFormats.DataFileName), FileMode.Open, FileAccess.ReadWrite))
        {
            // Flip a byte in the middle of the only used slot's payload.
            long payload = StoredFormats.FileHeaderBytes + StoredFormats.SlotHeaderBytes(Exact.ChunkTokens);
            file.Position = payload + 1000;
            int b = file.ReadByte();
            file.Position = payload + 1000;
            file.WriteByte((byte)(b ^ 0x40));
        }
        using var reopened = Open(Int8);
        var read = new byte[Exact.ExactPayloadBytes];
        Assert.False(reopened.TryGet(key, TestPayloads.Tokens(key), read, out _));
        Assert.Equal(0, reopened.GetStats().Entries);
        Assert.All(read, b => Assert.Equal(0, b)); // nothing decoded from bytes that failed
    }

    [Fact]
    public void AnEncodedPoolIsNeverOpenedAsAnotherEncoding()
    {
        var key = TestPayloads.Key(1, 3);
        using (var pool = Open(Int8)) Assert.True(pool.Put(key, TestPayloads.Tokens(key), Chunk(key)));
        var refused = Assert.Throws<SlotPoolMismatchException>(() => Open(Exact, MismatchPolicy.Refuse));
        Assert.Contains("stored int8", refused.Message);
        Assert.Throws<SlotPoolMismatchException>(() => Open(Exact with { Encoding = KvEncoding.Int4 }, MismatchPolicy.Refuse));
        using var recreated = Open(Exact);
        Assert.False(recreated.TryGet(key, TestPayloads.Tokens(key), new byte[Exact.PayloadBytes], out _));
    }

    [Fact]
    public void EveryEntryCarriesItsEncodingInWhatItsHeaderAuthenticates()
    {
        Assert.NotEqual(Exact.LayoutHash, Int8.LayoutHash);
        Assert.NotEqual(Int8.LayoutHash, (Exact with { Encoding = KvEncoding.Int4 }).LayoutHash);
        Assert.NotEqual(Exact, Int8);
    }

    [Fact]
    public void AChunkWithNonFiniteValuesIsNotStoredAndSaysWhy()
    {
        using var pool = Open(Int8);
        var key = TestPayloads.Key(1, 4);
        var chunk = Chunk(key);
        MemoryMarshal.Cast<byte, Half>(chunk.AsSpan())[77] = Half.PositiveInfinity;
        string? why = null;
        pool.NotStored += (_, reason) => why = reason;
        Assert.False(pool.Put(key, TestPayloads.Tokens(key), chunk));
        Assert.Contains("not finite", why);
        Assert.Equal(1, pool.GetStats().NotStored);
        var e = Assert.Throws<ArgumentException>(() => pool.Put(key, TestPayloads.Tokens(key), new byte[100]));
        Assert.Contains($"whole chunks of {Exact.ExactPayloadBytes} bytes", e.Message);
    }

    public void Dispose() => _temp.Dispose();
}
