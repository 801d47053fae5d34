using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Storage;

public sealed class SlotPoolTests : IDisposable
{
    private readonly TempDir _temp = new();

    private SlotPool Open(int slots = 16, bool readOnly = false, Durability durability = Durability.None) =>
        SlotPool.Open(new SlotPoolOptions
        {
            Directory = _temp.Path, Identity = TestPayloads.Identity, CapacitySlots = slots, ReadOnly = readOnly, Durability = durability,
        });

    private static void Put(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(1, i);
        Assert.True(pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)));
    }

    private static bool Served(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(1, i);
        var buffer = new byte[pool.PayloadCapacity];
        if (!pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int length)) return false;
        Assert.Equal(TestPayloads.Payload(key), buffer[..length]);
        return true;
    }

    [Fact]
    public void SlotSizeFollowsFromTheLayoutAndTheFileGrowsOnDemand()
    {
        using var pool = Open(slots: 10);
        Assert.Equal(64 * 1024, TestPayloads.Identity.PayloadBytes);
        Assert.Equal(4096 + 64 * 1024, pool.SlotBytes);
        var file = Path.Combine(_temp.Path, "slots.bin");
        Assert.Equal(4096 + 10 * pool.SlotBytes, new FileInfo(file).Length);
        var stat = ChildProcess.Output("stat", "--format=%b %B", file).Split(' ');
        Assert.True(long.Parse(stat[0]) * long.Parse(stat[1]) < new FileInfo(file).Length / 4, "a new slot file takes disk blocks only as slots are written");

        using var bytes = SlotPool.Open(new SlotPoolOptions { Directory = _temp.Sub("b"), Identity = TestPayloads.Identity, CapacityBytes = 1_000_000 });
        Assert.Equal((1_000_000 - 4096) / pool.SlotBytes, bytes.SlotCount);
    }

    [Fact]
    public void AWriterAskingForAnotherCapacityResizesThePool()
    {
        var options = new SlotPoolOptions { Directory = _temp.Sub("resize"), Identity = TestPayloads.Identity, CapacitySlots = 8 };
        var keys = Enumerable.Range(0, 6).Select(i => TestPayloads.Key(7, i)).ToArray();
        using (var pool = SlotPool.Open(options))
            foreach (var key in keys) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));

        using (var grown = SlotPool.Open(options with { CapacitySlots = 16 }))
        {
            Assert.Equal(16, grown.SlotCount);
            Assert.All(keys, k => Assert.True(Served(grown, k)));
            var more = TestPayloads.Key(7, 100);
            grown.Put(more, TestPayloads.Tokens(more), TestPayloads.Payload(more));
        }
        using (var kept = SlotPool.Open(options with { CapacitySlots = null, CapacityBytes = null }))
            Assert.Equal(16, kept.SlotCount); // no capacity named: the pool keeps its size

        using (var shrunk = SlotPool.Open(options with { CapacitySlots = 4 }))
        {
            Assert.Equal(4, shrunk.SlotCount);
            Assert.Equal(4096 + 4 * shrunk.SlotBytes, new FileInfo(Path.Combine(options.Directory, "slots.bin")).Length);
            // The four most recently used stay (0-5 were read in order above, then 100 was put), served byte for byte.
            var recent = new HashSet<ChunkKey> { keys[3], keys[4], keys[5], TestPayloads.Key(7, 100) };
            Assert.True(recent.SetEquals(shrunk.Entries().Select(e => e.Key)), "shrinking did not keep the four most recently used entries");
            Assert.All(shrunk.Entries(), e => Assert.True(Served(shrunk, e.Key)));
        }
    }

    private static bool Served(SlotPool pool, ChunkKey key)
    {
        var buffer = new byte[pool.PayloadCapacity];
        return pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int n) && buffer.AsSpan(0, n).SequenceEqual(TestPayloads.Payload(key));
    }

    [Fact]
    public void PutsFromManyThreadsAtOnceEachGetTheirOwnSlotAndEveryKeyIsServedOnceWritten()
    {
        // 8 threads put 48 keys (each key twice, by two threads) into 16 slots while 2 threads read: the pool
        // evicts as it goes, never hands one slot to two writers, and serves only bytes stored under the key.
        using var pool = Open(slots: 16);
        int stored = 0, wrong = 0;
        using var stop = new CancellationTokenSource();
        var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() =>
        {
            var buffer = new byte[pool.PayloadCapacity];
            for (int n = 0; !stop.IsCancellationRequested; n++)
            {
                var key = TestPayloads.Key(1, n % 48);
                if (pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int length) && !buffer.AsSpan(0, length).SequenceEqual(TestPayloads.Payload(key)))
                    Interlocked.Increment(ref wrong);
            }
        })).ToArray();
        Parallel.For(0, 96, new ParallelOptions { MaxDegreeOfParallelism = 8 }, n =>
        {
            var key = TestPayloads.Key(1, n % 48);
            if (pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key))) Interlocked.Increment(ref stored);
        });
        stop.Cancel();
        Task.WaitAll(readers);

        Assert.Equal(0, wrong);
        Assert.InRange(stored, 48, 96);
        var stats = pool.GetStats();
        Assert.Equal(16, stats.Entries);
        // A read that raced the eviction of its entry is a miss (counted as damaged); every entry still indexed is intact.
        Assert.Equal(16, Enumerable.Range(0, 48).Count(i => Served(pool, i)));
        // What the journal says after all that matches the slots: a reopened pool serves the same 16 keys.
        var served = Enumerable.Range(0, 48).Where(i => pool.Contains(TestPayloads.Key(1, i))).ToList();
        pool.Dispose();
        using var reopened = Open(slots: 16);
        Assert.Equal(served, Enumerable.Range(0, 48).Where(i => Served(reopened, i)).ToList());
    }

    [Fact]
    public void PutGetRemoveClearAndStats()
    {
        using var pool = Open();
        for (int i = 0; i < 5; i++) Put(pool, i);
        var key0 = TestPayloads.Key(1, 0);
        Assert.False(pool.Put(key0, TestPayloads.Tokens(key0), TestPayloads.Payload(key0)));
        for (int i = 0; i < 5; i++) Assert.True(Served(pool, i));
        Assert.False(Served(pool, 99));
        Assert.True(pool.Contains(key0));
        Assert.True(pool.Remove(key0));
        Assert.False(pool.Remove(key0));
        Assert.False(Served(pool, 0));
        var stats = pool.GetStats();
        Assert.Equal((4, 5L, 5L, 2L, 0L), (stats.Entries, stats.Puts, stats.Hits, stats.Misses, stats.Damaged));
        Assert.Equal(4L * 64 * 1024, stats.PayloadBytes);
        pool.Clear();
        Assert.Equal(0, pool.GetStats().Entries);
        Assert.False(Served(pool, 1));
    }

    [Fact]
    public void WrongTokensOrKeyAreMissesAndBadArgumentsAreExplained()
    {
        using var pool = Open();
        Put(pool, 1);
        var key = TestPayloads.Key(1, 1);
        var tokens = TestPayloads.Tokens(key);
        tokens[3]++;
        Assert.False(pool.TryGet(key, tokens, new byte[pool.PayloadCapacity], out _));
        Put(pool, 2);
        var key2 = TestPayloads.Key(1, 2);
        Assert.Contains("destination holds 10 bytes", Assert.Throws<ArgumentException>(() => pool.TryGet(key2, TestPayloads.Tokens(key2), new byte[10], out _)).Message);
        Assert.True(Served(pool, 2));
        Assert.Contains("at most 32 tokens", Assert.Throws<ArgumentException>(() => pool.Put(key, new int[33], new byte[1])).Message);
        Assert.Contains("at most 65536 payload bytes", Assert.Throws<ArgumentException>(() => pool.Put(key, new int[3], new byte[65537])).Message);
    }

    [Fact]
    public void EntriesAndRecencySurviveARestartAndDriveEviction()
    {
        using (var pool = Open(slots: 4))
        {
            for (int i = 0; i < 4; i++) Put(pool, i);
            Assert.True(Served(pool, 0)); // 0 becomes the most recent; 1 is now the oldest
        }
        using (var pool = Open(slots: 4))
        {
            for (int i = 0; i < 4; i++) Assert.True(Served(pool, i == 0 ? 0 : i)); // order of use now: 0,1,2,3 → oldest 0
            Put(pool, 10);
            Assert.False(pool.Contains(TestPayloads.Key(1, 0)));
            Assert.Equal(1, pool.GetStats().Evictions);
        }
        using (var pool = Open(slots: 4))
        {
            Assert.Equal(4, pool.GetStats().Entries);
            Assert.True(Served(pool, 10));
            Assert.False(Served(pool, 0));
        }
    }

    [Fact]
    public void ReadOnlyHandlesSeeEntriesJournaledAfterTheyOpened()
    {
        using var writer = Open();
        Put(writer, 1);
        using var reader = Open(readOnly: true);
        Assert.True(Served(reader, 1));
        Put(writer, 2);
        Assert.True(Served(reader, 2));
        writer.Compact();
        Put(writer, 3);
        Assert.True(Served(reader, 3));
        Assert.Throws<InvalidOperationException>(() => reader.Remove(TestPayloads.Key(1, 1)));
        Assert.True(SlotPool.OpenExisting(_temp.Path).Contains(TestPayloads.Key(1, 2)));
    }

    [Fact]
    public void ConcurrentPutsAndGetsInOneProcessServeOnlyCorrectBytes()
    {
        using var pool = Open(slots: 8);
        long wrong = 0, hits = 0;
        int writersLeft = 2;
        // Two writers and two readers on their own threads; the readers read for as long as the writers write, then 100 reads more.
        var workers = Enumerable.Range(0, 4).Select(worker => Task.Factory.StartNew(() =>
        {
            var rng = new Random(worker);
            var buffer = new byte[pool.PayloadCapacity];
            bool writer = worker % 2 == 0;
            for (int n = 0, after = 0; writer ? n < 300 : Volatile.Read(ref writersLeft) > 0 || after++ < 100; n++)
            {
                var key = TestPayloads.Key(1, rng.Next(20));
                if (writer) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
                else if (pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int length))
                {
                    Interlocked.Increment(ref hits);
                    if (!buffer.AsSpan(0, length).SequenceEqual(TestPayloads.Payload(key))) Interlocked.Increment(ref wrong);
                }
            }
            if (writer) Interlocked.Decrement(ref writersLeft);
        }, TaskCreationOptions.LongRunning)).ToArray();
        Task.WaitAll(workers);
        Assert.Equal(0, wrong);
        Assert.True(hits > 0);
        Assert.Equal(8, pool.Verify().Valid);
    }

    [Fact]
    public void VerifyScansEverySlotAndDropsDamage()
    {
        using (var pool = Open())
            for (int i = 0; i < 6; i++) Put(pool, i);
        SlotFileDamage.FlipByte(_temp.Path, slot: 2, offsetInSlot: 4096 + 777);
        using var reopened = Open();
        var report = reopened.Verify();
        Assert.Equal((6, 5, 1), (report.Checked, report.Valid, report.Dropped));
        Assert.Equal(5, reopened.GetStats().Entries);
        Assert.Equal(1, reopened.GetStats().Damaged);
    }

    [Fact]
    public void DurabilitySettingsAllRoundTrip()
    {
        foreach (var durability in Enum.GetValues<Durability>())
        {
            using var temp = new TempDir();
            using (var pool = SlotPool.Open(new SlotPoolOptions { Directory = temp.Path, Identity = TestPayloads.Identity, CapacitySlots = 4, Durability = durability, BatchInterval = TimeSpan.FromMilliseconds(10) }))
            {
                Put(pool, 1);
                Thread.Sleep(30);
                pool.Flush();
            }
            using var again = SlotPool.Open(new SlotPoolOptions { Directory = temp.Path, Identity = TestPayloads.Identity, ReadOnly = true });
            Assert.True(Served(again, 1));
        }
    }

    public void Dispose() => _temp.Dispose();
}
