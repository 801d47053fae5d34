using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// The pool reaches its medium only through the device seam: the same pool works on files and in memory, and the faults a
/// disk has (transient and permanent errors, torn writes, no space from a byte on, stalls) cost what was being written at
/// that moment and nothing stored before.
/// </summary>
public sealed class StorageDeviceTests : IDisposable
{
    private readonly TempDir _temp = new();

    private static SlotPoolOptions Options(IStorageMedium medium, int slots = 16) => new()
    {
        Directory = medium.Location, Medium = medium, Identity = TestPayloads.Identity, CapacitySlots = slots, Durability = Durability.None,
    };

    private FileMedium Files(string name)
    {
        Directory.CreateDirectory(_temp.Sub(name));
        return new FileMedium(_temp.Sub(name));
    }

    private static ChunkKey Put(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(3, i);
        Assert.False(pool.Contains(key), $"entry {i} is stored already");
        Assert.True(pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)));
        return key;
    }

    private static bool Served(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(3, i);
        var buffer = new byte[pool.PayloadCapacity];
        return pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int n) && buffer.AsSpan(0, n).SequenceEqual(TestPayloads.Payload(key));
    }

    [Fact]
    public void APoolInMemoryBehavesLikeOneOnFilesAcrossReopens()
    {
        foreach (IStorageMedium medium in new IStorageMedium[] { new MemoryMedium(), Files("files") })
        {
            using (var pool = SlotPool.Open(Options(medium, slots: 4)))
                for (int i = 0; i < 6; i++) Put(pool, i); // two evicted
            using var reopened = SlotPool.Open(Options(medium, slots: 4) with { ReadOnly = true });
            Assert.Equal([false, false, true, true, true, true], Enumerable.Range(0, 6).Select(i => Served(reopened, i)));
            Assert.Equal(4, reopened.GetStats().Entries);
        }
    }

    [Fact]
    public void ATransientWriteErrorFailsOnePutAndTheNextOneWorks()
    {
        var faults = new FaultPlan();
        using var pool = SlotPool.Open(Options(new FaultMedium(new MemoryMedium(), faults)));
        Put(pool, 0);
        faults.FailWrites(StoredFormats.DataFileName, count: 1);
        var e = Assert.Throws<IOException>(() => Put(pool, 1));
        Assert.Contains("Entries stored earlier are unaffected", e.Message);
        Put(pool, 2);
        Assert.Equal([true, false, true], Enumerable.Range(0, 3).Select(i => Served(pool, i)));
        Assert.Equal(0, pool.GetStats().BeingWritten); // the failed put let its slot go
    }

    [Theory]
    [InlineData(StoredFormats.JournalFileName)]
    [InlineData(StoredFormats.DataFileName)]
    public void ATornWriteLosesOnlyTheEntryBeingWritten(string file)
    {
        var faults = new FaultPlan();
        var medium = new FaultMedium(new MemoryMedium(), faults);
        using (var pool = SlotPool.Open(Options(medium)))
        {
            for (int i = 0; i < 3; i++) Put(pool, i);
            faults.TearNextWrite(file, keepBytes: 7);
            Assert.Throws<IOException>(() => Put(pool, 3));
            Put(pool, 4); // the torn tail was cut: later records follow complete ones
        }
        using var reopened = SlotPool.Open(Options(medium) with { ReadOnly = true });
        Assert.Equal([true, true, true, false, true], Enumerable.Range(0, 5).Select(i => Served(reopened, i)));
    }

    [Fact]
    public void NoSpaceFromAChosenByteFailsThePutsThatReachItAndServesTheRest()
    {
        var faults = new FaultPlan();
        var medium = new FaultMedium(new MemoryMedium(), faults);
        using var pool = SlotPool.Open(Options(medium, slots: 8));
        // Slots 0-2 fit, slot 3's payload reaches past the end of the disk.
        faults.NoSpaceFrom(StoredFormats.DataFileName, StoredFormats.FileHeaderBytes + 3 * pool.SlotBytes + 5000);
        for (int i = 0; i < 3; i++) Put(pool, i);
        Assert.Throws<IOException>(() => Put(pool, 3));
        Assert.Equal([true, true, true, false], Enumerable.Range(0, 4).Select(i => Served(pool, i)));
        faults.Heal();
        Put(pool, 5);
        Assert.True(Served(pool, 5));
    }

    [Fact]
    public void ReadErrorsAreMissesThatKeepTheEntry()
    {
        var faults = new FaultPlan();
        using var pool = SlotPool.Open(Options(new FaultMedium(new MemoryMedium(), faults)));
        Put(pool, 0);
        faults.FailReads(StoredFormats.DataFileName, count: 2);
        Assert.False(Served(pool, 0)); // the read failed: a miss, not an exception
        Assert.False(Served(pool, 0));
        Assert.True(Served(pool, 0)); // the disk works again: nothing was dropped for an I/O error
        Assert.Equal(0, pool.GetStats().Damaged);
    }

    /// <summary>
    /// A writer stalled in the middle of a payload write (a slow or hung disk) holds no lock: another writer of the same
    /// pool stores and reads meanwhile, and sees the stalled write as one slot being written.
    /// </summary>
    [Fact]
    public void AWriterStalledInAPayloadWriteHoldsNoLock()
    {
        var memory = new MemoryMedium();
        var stalled = new FaultPlan().PauseWrites(StoredFormats.DataFileName);
        using var slow = SlotPool.Open(Options(new FaultMedium(memory, stalled), slots: 8));
        using var other = SlotPool.Open(Options(memory, slots: 8));
        var stuck = Task.Run(() => Put(slow, 100));
        SpinWait.SpinUntil(() => stalled.WritesWaiting > 0, TimeSpan.FromSeconds(30));
        Assert.Equal(1, stalled.WritesWaiting);

        var quick = Task.Run(() => { for (int i = 0; i < 5; i++) Put(other, i); });
        Assert.True(quick.Wait(TimeSpan.FromSeconds(30)), "a writer waited for another's payload write");
        Assert.Equal(1, other.GetStats().BeingWritten);
        Assert.All(Enumerable.Range(0, 5), i => Assert.True(Served(other, i)));

        stalled.Resume(StoredFormats.DataFileName);
        stuck.Wait(TimeSpan.FromSeconds(30));
        Assert.True(Served(other, 100));
        Assert.Equal(0, other.GetStats().BeingWritten);
    }

    /// <summary>A reader that misses reads only what was appended to the journal since its last look: nothing when nothing was.</summary>
    [Fact]
    public void AReaderFollowsTheJournalReadingOnlyWhatWasAppended()
    {
        var memory = new MemoryMedium();
        var reads = new FaultPlan();
        using var writer = SlotPool.Open(Options(memory, slots: 64) with { CompactAfterRecords = long.MaxValue });
        for (int i = 0; i < 2000; i++) writer.Touch([Put(writer, i)]); // a long journal: puts, evictions, touches
        writer.Flush();
        using var reader = SlotPool.Open(Options(new FaultMedium(memory, reads)) with { ReadOnly = true });
        long afterOpen = reads.BytesRead(StoredFormats.JournalFileName);
        Assert.True(afterOpen > 50_000, $"the journal is {afterOpen} bytes");

        for (int i = 0; i < 200; i++) Assert.False(reader.Contains(TestPayloads.Key(8, i)));
        Assert.Equal(afterOpen, reads.BytesRead(StoredFormats.JournalFileName)); // 200 misses, nothing new: no journal byte read

        var key = TestPayloads.Key(9, 1);
        writer.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        Assert.True(reader.Contains(key));
        long read = reads.BytesRead(StoredFormats.JournalFileName) - afterOpen;
        Assert.InRange(read, 1, 512); // the reservation and the put, not the journal again
    }

    /// <summary>A FIFO planted where a pool file goes is refused naming it (as a link is, PoolFileSafetyTests); opening never hangs on it.</summary>
    [Theory]
    [InlineData(StoredFormats.JournalFileName)]
    [InlineData(StoredFormats.SnapshotFileName)]
    [InlineData(StoredFormats.DataFileName)]
    public void AFifoPlantedAsAPoolFileIsRefusedNeverWaitedOn(string name)
    {
        var dir = _temp.Sub("fifo-" + name);
        using (SlotPool.Open(new SlotPoolOptions { Directory = dir, Identity = TestPayloads.Identity, CapacitySlots = 4 })) { }
        File.Delete(Path.Combine(dir, name));
        Assert.Equal(0, ChildProcess.Output("mkfifo", Path.Combine(dir, name)).Length);
        var open = Task.Run(() =>
        {
            try
            {
                using var pool = SlotPool.Open(new SlotPoolOptions { Directory = dir, ReadOnly = true });
                return pool.GetStats().Entries.ToString();
            }
            catch (IOException e)
            {
                return e.Message;
            }
        });
        Assert.True(open.Wait(TimeSpan.FromSeconds(10)), $"opening a pool with a FIFO as {name} hung");
        Assert.Contains("not a regular file", open.Result);
        Assert.Contains(name, open.Result);
    }

    public void Dispose() => _temp.Dispose();
}
