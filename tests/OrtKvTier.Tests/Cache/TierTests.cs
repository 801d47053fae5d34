using OrtKvTier.Tiers;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tests.Cache;

public sealed class TierTests : IDisposable
{
    private const int ChunkBytes = 4096;
    private readonly TempDir _temp = new();

    [Fact]
    public void HostTierKeepsTheMostRecentlyUsedChunksWithinItsBudget()
    {
        using var host = new HostTier(3 * ChunkBytes, ChunkBytes);
        var keys = Enumerable.Range(0, 5).Select(i => TestPayloads.Key(1, i)).ToArray();
        for (int i = 0; i < 3; i++) Assert.True(host.Write(keys[i], Tokens(keys[i]), TestPayloads.Payload(keys[i], ChunkBytes)));
        Assert.False(host.Write(keys[0], Tokens(keys[0]), TestPayloads.Payload(keys[0], ChunkBytes))); // already held
        var buffer = new byte[ChunkBytes];
        Assert.True(host.TryRead(keys[0], Tokens(keys[0]), buffer)); // 0 is now the most recent
        host.Write(keys[3], Tokens(keys[3]), TestPayloads.Payload(keys[3], ChunkBytes));
        host.Write(keys[4], Tokens(keys[4]), TestPayloads.Payload(keys[4], ChunkBytes));
        Assert.True(host.Contains(keys[0]));
        Assert.False(host.Contains(keys[1]));
        Assert.False(host.Contains(keys[2]));
        var stats = host.GetStats();
        Assert.Equal(3, stats.Entries);
        Assert.Equal(3 * ChunkBytes, stats.Bytes);
        Assert.Equal(2, stats.Evictions);
        Assert.True(host.TryRead(keys[4], Tokens(keys[4]), buffer));
        Assert.Equal(TestPayloads.Payload(keys[4], ChunkBytes), buffer);
    }

    [Fact]
    public void HostTierMissesWhenTheTokensDifferAndRefusesWrongSizes()
    {
        using var host = new HostTier(ChunkBytes * 4, ChunkBytes);
        var key = TestPayloads.Key(2, 0);
        host.Write(key, Tokens(key), TestPayloads.Payload(key, ChunkBytes));
        var other = Tokens(key);
        other[3]++;
        Assert.False(host.TryRead(key, other, new byte[ChunkBytes]));
        var e = Assert.Throws<ArgumentException>(() => host.Write(TestPayloads.Key(2, 1), Tokens(key), new byte[ChunkBytes - 1]));
        Assert.Contains($"A host-tier chunk is {ChunkBytes} bytes; got {ChunkBytes - 1}", e.Message);
        using var tooSmall = new HostTier(ChunkBytes - 1, ChunkBytes);
        Assert.False(tooSmall.Write(key, Tokens(key), TestPayloads.Payload(key, ChunkBytes)));
    }

    [Fact]
    public void ALeasedChunkStaysReadableAfterEviction()
    {
        using var host = new HostTier(ChunkBytes, ChunkBytes);
        var first = TestPayloads.Key(3, 0);
        var second = TestPayloads.Key(3, 1);
        host.Write(first, Tokens(first), TestPayloads.Payload(first, ChunkBytes));
        Assert.True(host.TryLease(first, Tokens(first), out var lease));
        host.Write(second, Tokens(second), TestPayloads.Payload(second, ChunkBytes)); // evicts first
        Assert.False(host.Contains(first));
        Assert.Equal(TestPayloads.Payload(first, ChunkBytes), lease.Bytes.ToArray());
        lease.Release();
        Assert.Throws<ObjectDisposedException>(() => lease.Bytes.Length);
    }

    [Fact]
    public unsafe void ASlotReadScattersRunsAndVerifiesTheBytesItDoesNotCopy()
    {
        var identity = TestPayloads.Identity; // 64 KiB payloads = 16 runs of 4 KiB
        using var pool = SlotPool.Open(new SlotPoolOptions { Directory = _temp.Sub("pool"), Identity = identity, CapacitySlots = 4, Durability = Durability.None });
        var key = TestPayloads.Key(4, 0);
        var payload = TestPayloads.Payload(key);
        Assert.True(pool.Put(key, TestPayloads.Tokens(key), payload));

        const int runs = 16, run = 4096, copy = 1000;
        var targets = new byte[runs][];
        var handles = new System.Runtime.InteropServices.GCHandle[runs];
        try
        {
            var pointers = new nint[runs];
            for (int r = 0; r < runs; r++)
            {
                targets[r] = new byte[copy + 8];
                handles[r] = System.Runtime.InteropServices.GCHandle.Alloc(targets[r], System.Runtime.InteropServices.GCHandleType.Pinned);
                pointers[r] = handles[r].AddrOfPinnedObject();
            }
            Assert.True(pool.TryGet(key, TestPayloads.Tokens(key), new PayloadScatter(pointers, run, copy), out _));
            for (int r = 0; r < runs; r++)
            {
                Assert.Equal(payload.AsSpan(r * run, copy).ToArray(), targets[r][..copy]);
                Assert.All(targets[r][copy..], b => Assert.Equal(0, b)); // nothing past the rows asked for
            }

            // A flipped byte in a part that is verified but not copied still makes the read a miss.
            pool.Dispose();
            SlotFileDamage.FlipByte(_temp.Sub("pool"), 0, StoredFormats.SlotHeaderBytes(identity.ChunkTokens) + 5 * run + 2000);
            using var reopened = SlotPool.Open(new SlotPoolOptions { Directory = _temp.Sub("pool"), Identity = identity, CapacitySlots = 4 });
            Assert.False(reopened.TryGet(key, TestPayloads.Tokens(key), new PayloadScatter(pointers, run, copy), out _));
            Assert.Equal(1, reopened.GetStats().Damaged);
        }
        finally
        {
            foreach (var h in handles) if (h.IsAllocated) h.Free();
        }
    }

    private static int[] Tokens(ChunkKey key) => TestPayloads.Tokens(key, 16);

    public void Dispose() => _temp.Dispose();
}
