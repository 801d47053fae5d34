using System.Text.Json;
using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using Xunit.Abstractions;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// Every process stores: writers that open, compact and close in any order, in one process or many, lose no entry
/// they were told was stored, and a writer that dies mid-write holds nothing the others need.
/// ORTKV_LONG_TESTS=1 runs 16 and 32 processes as well as 8.
/// </summary>
[Collection(nameof(ProcessHeavyTests))]
public sealed class ConcurrentWriterTests(ITestOutputHelper output) : IDisposable
{
    private static readonly bool Long = Environment.GetEnvironmentVariable("ORTKV_LONG_TESTS") == "1";
    private readonly TempDir _temp = new();

    private SlotPoolOptions Options(int slots = 512) => new()
    {
        Directory = _temp.Sub("pool"), Identity = TestPayloads.Identity, CapacitySlots = slots, Durability = Durability.None,
        WriterLockTimeout = TimeSpan.FromSeconds(10),
    };

    private static bool Put(SlotPool pool, ChunkKey key) => pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));

    private static bool Served(SlotPool pool, ChunkKey key)
    {
        var buffer = new byte[pool.PayloadCapacity];
        return pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int n) && buffer.AsSpan(0, n).SequenceEqual(TestPayloads.Payload(key));
    }

    /// <summary>
    /// What lost entries before: a writer opened before another compacts after the other stored, and its snapshot kept
    /// only the generations of its own epoch.
    /// </summary>
    [Fact]
    public void ACompactionByAnEarlierWriterKeepsTheEntriesOfALaterOne()
    {
        using (SlotPool.Open(Options())) { }
        var earlier = SlotPool.Open(Options());
        var later = SlotPool.Open(Options());
        var keys = Enumerable.Range(0, 6).Select(i => TestPayloads.Key(11, i)).ToArray();
        foreach (var key in keys[..5]) Assert.True(Put(later, key));
        Assert.True(Put(earlier, keys[5]));
        earlier.Compact();
        earlier.Dispose();
        using (var reader = SlotPool.Open(Options() with { ReadOnly = true }))
            Assert.All(keys, key => Assert.True(Served(reader, key), $"{key} lost by the earlier writer's compaction"));
        later.Dispose();
        using var reopened = SlotPool.Open(Options());
        Assert.All(keys, key => Assert.True(Served(reopened, key), $"{key} lost after both closed"));
    }

    /// <summary>Eight writers in one process (each its own open, as separate processes are) store at once, compacting every few records, while two readers check every byte they are served.</summary>
    [Fact]
    public void EightWritersStoringAtOnceWithCompactionsLoseNothing()
    {
        using (SlotPool.Open(Options())) { }
        var pools = Enumerable.Range(0, 8).Select(_ => SlotPool.Open(Options() with { CompactAfterRecords = 48 })).ToArray();
        int wrong = 0;
        using var stop = new CancellationTokenSource();
        var readers = Enumerable.Range(0, 2).Select(r => Task.Run(() =>
        {
            using var reader = SlotPool.Open(Options() with { ReadOnly = true });
            var buffer = new byte[reader.PayloadCapacity];
            for (int n = 0; !stop.IsCancellationRequested; n++)
            {
                var key = TestPayloads.Key(20 + n % 8, n / 8 % 50);
                if (reader.TryGet(key, TestPayloads.Tokens(key), buffer, out int length) && !buffer.AsSpan(0, length).SequenceEqual(TestPayloads.Payload(key)))
                    Interlocked.Increment(ref wrong);
            }
        })).ToArray();
        var stored = new int[8];
        Parallel.For(0, 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, w =>
        {
            for (int i = 0; i < 50; i++)
                if (Put(pools[w], TestPayloads.Key(20 + w, i))) stored[w]++;
        });
        stop.Cancel();
        Task.WaitAll(readers);
        foreach (var pool in pools) pool.Dispose();

        Assert.Equal(0, wrong);
        Assert.All(stored, n => Assert.Equal(50, n));
        using var reopened = SlotPool.Open(Options() with { ReadOnly = true });
        int present = Enumerable.Range(0, 8).Sum(w => Enumerable.Range(0, 50).Count(i => Served(reopened, TestPayloads.Key(20 + w, i))));
        Assert.Equal(400, present);
        output.WriteLine($"8 writers × 50 puts with compactions every 48 records: 400 stored, 400 served byte for byte, 0 wrong.");
    }

    /// <summary>
    /// A writer SIGKILLed in the middle of a payload write leaves a reservation; the next writer sees its liveness lock
    /// is free and takes the slot and the key at once (a pool of one slot), without waiting for the reservation to expire.
    /// </summary>
    [Fact]
    public void ASlotAndKeyAWriterReservedBeforeItDiedAreFreeAtOnce()
    {
        using (SlotPool.Open(Options(slots: 1))) { }
        using (var child = ChildProcess.Start(ChildProcess.TestChildDll, "stall", Options().Directory, "1", "30"))
        {
            ChildProcess.WaitForLine(child, "ready", TimeSpan.FromSeconds(60));
            using (var watcher = SlotPool.Open(Options(slots: 1) with { ReadOnly = true }))
            {
                watcher.Contains(TestPayloads.Key(30, 0));
                Assert.Equal(1, watcher.GetStats().BeingWritten);
            }
            child.Kill();
            child.WaitForExit();
        }
        using var pool = SlotPool.Open(Options(slots: 1));
        var key = TestPayloads.Key(30, 0);
        Assert.True(Put(pool, key), "the dead writer's reservation kept the key");
        Assert.True(Served(pool, key));
        Assert.Equal(0, pool.GetStats().NotStored);
    }

    public static TheoryData<int> Processes() => Long ? new TheoryData<int> { 8, 16, 32 } : new TheoryData<int> { 8 };

    /// <summary>
    /// <c>ortkv generate</c> in N processes at once, each with its own prompt, on a new cache directory and then again on
    /// the pool the first round left: every chunk a process captured is in the pool afterwards, and no process warned.
    /// </summary>
    [Theory]
    [MemberData(nameof(Processes))]
    public void ProcessesStoringDifferentPromptsAtOnceLoseNoEntry(int processes)
    {
        var cacheDir = _temp.Sub("cache");
        int expected = 0;
        for (int round = 0; round < 2; round++)
        {
            var runs = Enumerable.Range(0, processes).Select(p => Task.Run(() => ChildProcess.Console("generate", "--cache-dir", cacheDir, "--max-new-tokens", "2", "--json",
                "--prompt", $"Round {round}, prompt {p}: " + string.Join(' ', Enumerable.Repeat($"word{round}x{p}", 40))))).ToArray();
            Task.WaitAll(runs);
            foreach (var run in runs)
            {
                var (code, stdout, stderr) = run.Result;
                Assert.True(code == 0, stderr);
                var cache = JsonDocument.Parse(stdout).RootElement.GetProperty("cache");
                expected += cache.GetProperty("captured_chunks").GetInt32();
                Assert.Empty(cache.GetProperty("warnings").EnumerateArray());
            }
            var pool = Assert.Single(Directory.GetDirectories(cacheDir));
            using var reader = SlotPool.OpenExisting(pool);
            Assert.Equal(expected, reader.GetStats().Entries);
            output.WriteLine($"{processes} processes, round {round + 1} ({(round == 0 ? "new" : "existing")} pool): {expected} chunks captured in all, {reader.GetStats().Entries} in the pool");
        }
    }

    public void Dispose() => _temp.Dispose();
}
