using System.Diagnostics;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using Xunit.Abstractions;
using OrtKvTier.Keys;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// The disk tier's promises under kills, damage, truncation, wrong files, concurrent processes and a
/// full disk. Deterministic from fixed seeds; ORTKV_LONG_TESTS=1 runs more iterations.
/// </summary>
[Collection(nameof(ProcessHeavyTests))]
public sealed class SlotPoolReliabilityTests(ITestOutputHelper output) : IDisposable
{
    private static readonly bool Long = Environment.GetEnvironmentVariable("ORTKV_LONG_TESTS") == "1";
    private readonly TempDir _temp = new();

    private SlotPoolOptions Options(string? dir = null, int slots = 64, bool readOnly = false) => new()
    {
        Directory = dir ?? _temp.Path, Identity = TestPayloads.Identity, CapacitySlots = slots, ReadOnly = readOnly, Durability = Durability.None,
    };

    /// <summary>Every entry the pool serves must be byte-identical to the payload regenerated from its key.</summary>
    private static (int Served, int Missed) CheckEverything(SlotPool pool)
    {
        int served = 0, missed = 0;
        var buffer = new byte[pool.PayloadCapacity];
        foreach (var (key, tokens, _) in pool.Entries())
        {
            if (pool.TryGet(key, TestPayloads.Tokens(key, tokens), buffer, out int length))
            {
                Assert.True(buffer.AsSpan(0, length).SequenceEqual(TestPayloads.Payload(key)), $"wrong bytes served for {key}");
                served++;
            }
            else missed++;
        }
        return (served, missed);
    }

    /// <summary>
    /// One damaged byte anywhere in the file header (magic, version, layout, slot size and count, pool id, epoch, encoding,
    /// checksum) costs no entry: the next writer rewrites the header from the layout it opens and keeps the slots, which
    /// still authenticate. A header that differs in more than a few bytes (another model's) is still a mismatch.
    /// </summary>
    [Theory]
    [InlineData(StoredFormats.FhMagic)]
    [InlineData(StoredFormats.FhVersion)]
    [InlineData(StoredFormats.FhSlotSize + 2)]
    [InlineData(StoredFormats.FhSlotCount)]
    [InlineData(StoredFormats.FhFingerprint + 5)]
    [InlineData(StoredFormats.FhKvHeads)]
    [InlineData(StoredFormats.FhChunkTokens)]
    [InlineData(StoredFormats.FhPoolId + 1)]
    [InlineData(StoredFormats.FhWriterEpoch)]
    [InlineData(StoredFormats.FhEncoding)]
    [InlineData(StoredFormats.FhChecksum + 7)]
    public void OneDamagedByteOfTheFileHeaderCostsNoEntry(int offset)
    {
        var keys = Enumerable.Range(0, 5).Select(i => TestPayloads.Key(31, i)).ToList();
        using (var pool = SlotPool.Open(Options()))
            foreach (var key in keys) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        var data = Path.Combine(_temp.Path, StoredFormats.DataFileName);
        using (var file = new FileStream(data, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = offset;
            int old = file.ReadByte();
            file.Position = offset;
            file.WriteByte((byte)(old ^ 0x5A));
        }
        Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options(readOnly: true)));

        using (var pool = SlotPool.Open(Options() with { OnMismatch = MismatchPolicy.Recreate }))
        {
            Assert.All(keys, k => Assert.True(pool.Contains(k), $"entry {k} lost after one damaged header byte at {offset}"));
            Assert.Equal((keys.Count, 0), CheckEverything(pool));
            var more = TestPayloads.Key(31, 99);
            pool.Put(more, TestPayloads.Tokens(more), TestPayloads.Payload(more));
        }
        using (var reopened = SlotPool.Open(Options(readOnly: true)))
            Assert.Equal((keys.Count + 1, 0), CheckEverything(reopened));
    }

    [Fact]
    public void AHeaderOfAnotherModelIsNoDamageToRepair()
    {
        using (var pool = SlotPool.Open(Options()))
            pool.Put(TestPayloads.Key(32, 1), TestPayloads.Tokens(TestPayloads.Key(32, 1)), TestPayloads.Payload(TestPayloads.Key(32, 1)));
        var data = Path.Combine(_temp.Path, StoredFormats.DataFileName);
        using (var file = new FileStream(data, FileMode.Open, FileAccess.ReadWrite))
        {
            file.Position = StoredFormats.FhFingerprint;
            file.Write(Enumerable.Repeat((byte)0xEE, 16).ToArray()); // a whole other fingerprint, checksum not updated
        }
        Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options()));
        using var recreated = SlotPool.Open(Options() with { OnMismatch = MismatchPolicy.Recreate });
        Assert.Empty(recreated.Entries());
    }

    [Fact]
    public void SigkillAtRandomMomentsNeverServesWrongBytesAndKeepsAcknowledgedEntries()
    {
        int kills = Long ? 1000 : 100;
        var rng = new Random(20261127);
        var durabilities = new[] { Durability.EveryWrite, Durability.Batched, Durability.None };
        int totalServed = 0, acknowledgedChecked = 0;
        var clock = Stopwatch.StartNew();
        for (int kill = 0; kill < kills; kill++)
        {
            // 1. Start a writer child and let it write for a random moment.
            var durability = durabilities[kill % durabilities.Length];
            using var child = ChildProcess.Start(ChildProcess.TestChildDll, "writer", _temp.Path, durability.ToString(), kill.ToString(), "48");
            var acks = new List<long>();
            ChildProcess.WaitForLine(child, "ready", TimeSpan.FromSeconds(60));
            var reader = Task.Run(() =>
            {
                string? line;
                while ((line = child.StandardOutput.ReadLine()) is not null)
                    if (line.StartsWith("ack ", StringComparison.Ordinal)) lock (acks) acks.Add(long.Parse(line[4..]));
            });
            Thread.Sleep(rng.Next(0, 40));
            // 2. SIGKILL it mid-write.
            child.Kill();
            child.WaitForExit();
            reader.Wait(TimeSpan.FromSeconds(10));

            // 3. Reopen as the writer and check every entry served.
            using var pool = SlotPool.Open(Options(slots: 48) with { WriterLockTimeout = TimeSpan.FromSeconds(5) });
            var (served, _) = CheckEverything(pool);
            totalServed += served;

            // 4. With durability on, everything acknowledged (and not evicted since) is present.
            if (durability == Durability.EveryWrite)
                foreach (var index in acks.TakeLast(24))
                {
                    var key = TestPayloads.Key(kill, index);
                    Assert.True(pool.Contains(key), $"kill {kill}: acknowledged entry {index} of {acks.Count} is missing");
                    acknowledgedChecked++;
                }
        }
        output.WriteLine($"{kills} SIGKILLs in {clock.Elapsed.TotalSeconds:F1} s: {totalServed} entries served and verified byte for byte, {acknowledgedChecked} acknowledged entries checked present, 0 wrong bytes.");
    }

    [Fact]
    public void FlippedBitsAndZeroedPagesAreMissesAndTheRestIsServed()
    {
        // 1. Write 40 entries and close.
        using (var pool = SlotPool.Open(Options()))
            for (int i = 0; i < 40; i++)
            {
                var key = TestPayloads.Key(1, i);
                pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            }
        // 2. Damage: payload bit flips, header bit flips (fields, token ids, checksum), zeroed pages.
        var damaged = new HashSet<int>();
        var rng = new Random(7);
        foreach (var slot in Enumerable.Range(0, 40).OrderBy(_ => rng.Next()).Take(24))
        {
            long offset = (damaged.Count % 4) switch
            {
                0 => 4096 + rng.Next(64 * 1024),
                1 => rng.Next(0, 96 + 4 * 32 + 8),
                2 => 4096 + rng.Next(16) * 4096,
                _ => 96 + 4 * rng.Next(32),
            };
            if (damaged.Count % 4 == 2) SlotFileDamage.ZeroPage(_temp.Path, slot, offset);
            else SlotFileDamage.FlipByte(_temp.Path, slot, offset, (byte)(1 << rng.Next(8)));
            damaged.Add(slot);
        }
        // 3. Reopen: every damaged entry is a miss, every intact one is served.
        using var reopened = SlotPool.Open(Options());
        var (served, missed) = CheckEverything(reopened);
        Assert.Equal(40 - damaged.Count, served);
        Assert.Equal(damaged.Count, missed);
        Assert.Equal(damaged.Count, reopened.GetStats().Damaged);
        output.WriteLine($"{damaged.Count} damaged slots: all misses; {served} intact slots served.");
    }

    [Fact]
    public void DamagedJournalOrSnapshotLosesOnlyWhatItCannotProve()
    {
        // Entries 0-19 go into the snapshot (compaction on close), 20-29 only into the journal.
        using (var pool = SlotPool.Open(Options()))
            for (int i = 0; i < 20; i++) PutKey(pool, i);
        var snapshot = Path.Combine(_temp.Path, "index.snapshot");
        File.Copy(snapshot, _temp.Sub("snapshot.copy"));
        using (var pool = SlotPool.Open(Options()))
        {
            for (int i = 20; i < 30; i++) PutKey(pool, i);
            File.Copy(Path.Combine(_temp.Path, "index.journal"), _temp.Sub("journal.copy"));
        }
        // As if the writer had been killed before compacting on close.
        File.Copy(_temp.Sub("journal.copy"), Path.Combine(_temp.Path, "index.journal"), overwrite: true);
        File.Copy(_temp.Sub("snapshot.copy"), snapshot, overwrite: true);

        // A flipped bit in the middle of the journal: the index is rebuilt from the slot headers, nothing intact is lost.
        var journal = Path.Combine(_temp.Path, "index.journal");
        SlotFileDamage.FlipAt(journal, new FileInfo(journal).Length / 2);
        using (var pool = SlotPool.Open(Options() with { ReadOnly = true }))
        {
            var (served, missed) = CheckEverything(pool);
            Assert.Equal((30, 0), (served, missed));
        }

        // Snapshot and journal both gone: the same.
        File.Move(snapshot, _temp.Sub("snapshot.moved"));
        File.Move(journal, _temp.Sub("journal.moved"));
        using (var pool = SlotPool.Open(Options() with { ReadOnly = true }))
            Assert.Equal((30, 0), CheckEverything(pool));
        File.Move(_temp.Sub("snapshot.moved"), snapshot);
        File.Move(_temp.Sub("journal.moved"), journal);

        // A flipped bit in the snapshot: the writer rebuilds the index from the slot headers.
        SlotFileDamage.FlipAt(snapshot, 100);
        using (var pool = SlotPool.Open(Options()))
        {
            var (served, missed) = CheckEverything(pool);
            Assert.Equal((30, 0), (served, missed));
        }
        // Zeroed journal header: ignored, snapshot still serves.
        File.WriteAllBytes(journal, new byte[64]);
        using (var pool = SlotPool.Open(Options()))
            Assert.Equal(30, CheckEverything(pool).Served);
    }

    [Fact]
    public void JournalTruncatedAtEveryLengthRecoversExactlyTheIntactSlots()
    {
        // 1. Write a history of puts, removes and touches, noting the journal length after each.
        var states = new List<(long JournalLength, HashSet<ChunkKey> Keys)>();
        var journal = Path.Combine(_temp.Path, "index.journal");
        using (var pool = SlotPool.Open(Options()))
        {
            var live = new HashSet<ChunkKey>();
            states.Add((new FileInfo(journal).Length, [.. live]));
            var rng = new Random(3);
            for (int step = 0; step < 30; step++)
            {
                var key = TestPayloads.Key(1, rng.Next(12));
                if (live.Contains(key) && rng.Next(2) == 0) { pool.Remove(key); live.Remove(key); }
                else if (live.Contains(key)) Assert.True(pool.TryGet(key, TestPayloads.Tokens(key), new byte[65536], out _));
                else { pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)); live.Add(key); }
                states.Add((new FileInfo(journal).Length, [.. live]));
            }
            File.Copy(journal, _temp.Sub("journal.full"));
            File.Copy(Path.Combine(_temp.Path, "index.snapshot"), _temp.Sub("snapshot.full"));
        }
        var full = File.ReadAllBytes(_temp.Sub("journal.full"));

        // 2. For every length: restore the snapshot, cut the journal, recover read-only. A journal cut between records
        //    is a state the pool was in: its complete records replay. One cut inside a record (torn) or inside its
        //    header is repaired from the slot headers: the pool holds exactly the live entries (removed ones had their
        //    headers cleared). Either way no byte served is wrong.
        var liveAtEnd = states[^1].Keys;
        var boundaries = new HashSet<int>();
        for (int at = StoredFormats.JournalHeaderBytes; at <= full.Length; at += StoredFormats.RecordOverhead + BitConverter.ToUInt16(full, at))
        {
            boundaries.Add(at);
            if (at == full.Length) break;
        }
        for (int length = 0; length <= full.Length; length++)
        {
            File.Copy(_temp.Sub("snapshot.full"), Path.Combine(_temp.Path, "index.snapshot"), overwrite: true);
            File.WriteAllBytes(journal, full[..length]);
            bool atBoundary = boundaries.Contains(length);
            var expected = atBoundary ? states.Last(s => s.JournalLength <= length).Keys : liveAtEnd;
            using var pool = SlotPool.Open(Options() with { ReadOnly = true });
            var recovered = pool.Entries().Select(e => e.Key).ToHashSet();
            Assert.True(expected.SetEquals(recovered), $"journal cut at {length} of {full.Length}: expected {expected.Count} entries, recovered {recovered.Count}");
            var (_, missed) = CheckEverything(pool); // never a wrong byte; an older state's entry whose slot was reused since is a miss
            if (!atBoundary) Assert.Equal(0, missed);
        }
        output.WriteLine($"journal of {full.Length} bytes cut at every length: each recovery held exactly the intact slots");
    }

    [Fact]
    public void WrongModelLayoutSlotSizeVersionOrFileSizeIsRefusedWithBothValues()
    {
        using (var pool = SlotPool.Open(Options(slots: 4))) PutKey(pool, 1);
        var data = Path.Combine(_temp.Path, "slots.bin");

        var otherModel = TestPayloads.Identity with { Fingerprint = new ModelFingerprint(42) };
        var e1 = Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options() with { Identity = otherModel }));
        Assert.Contains(TestPayloads.Identity.Fingerprint.ToString(), e1.Message);
        Assert.Contains(otherModel.Fingerprint.ToString(), e1.Message);

        var otherLayout = TestPayloads.Identity with { Shape = TestPayloads.Identity.Shape with { KvHeads = 4 } };
        var e2 = Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options() with { Identity = otherLayout }));
        Assert.Contains("4x2x64 fp16, 32-token chunks", e2.Message);
        Assert.Contains("4x4x64 fp16, 32-token chunks", e2.Message);

        var otherChunk = TestPayloads.Identity with { ChunkTokens = 16 };
        Assert.Contains("16-token chunks", Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options() with { Identity = otherChunk })).Message);

        // Format version: rewrite the header with another version and a valid checksum.
        var original = File.ReadAllBytes(data)[..4096];
        var patched = (byte[])original.Clone();
        BitConverter.TryWriteBytes(patched.AsSpan(8), 99u);
        BitConverter.TryWriteBytes(patched.AsSpan(88), System.IO.Hashing.XxHash64.HashToUInt64(patched.AsSpan(0, 88)));
        WriteAt(data, 0, patched);
        var e3 = Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options()));
        Assert.Contains($"format version 99; this library reads version {StoredFormats.FormatVersion}", e3.Message);
        WriteAt(data, 0, original);

        // Truncated and extended files.
        long size = new FileInfo(data).Length;
        foreach (var wrongSize in new[] { size - 5000, size + 4096, 100 })
        {
            using (var f = new FileStream(data, FileMode.Open)) f.SetLength(wrongSize);
            var e4 = Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options()));
            Assert.True(e4.Message.Contains($"is {wrongSize} bytes") , e4.Message);
            Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(Options() with { ReadOnly = true }));
            Assert.Throws<SlotPoolMismatchException>(() => SlotPool.OpenExisting(_temp.Path));
        }

        // Recreate when asked: a fresh, empty pool for the new identity.
        using var recreated = SlotPool.Open(Options() with { Identity = otherModel, OnMismatch = MismatchPolicy.Recreate });
        Assert.Equal(0, recreated.GetStats().Entries);
        Assert.Equal(otherModel.Fingerprint, recreated.Identity.Fingerprint);
    }

    [Fact]
    public void OneWriterAndThreeReaderProcessesWithHeavySlotReuseServeZeroWrongBytes()
    {
        double seconds = Long ? 60 : 20;
        using var writer = ChildProcess.Start(ChildProcess.TestChildDll, "cycler", _temp.Path, "8", "24", seconds.ToString(System.Globalization.CultureInfo.InvariantCulture));
        ChildProcess.WaitForLine(writer, "ready", TimeSpan.FromSeconds(60));
        var readers = Enumerable.Range(0, 3)
            .Select(_ => ChildProcess.Start(ChildProcess.TestChildDll, "reader", _temp.Path, "24", (seconds - 1).ToString(System.Globalization.CultureInfo.InvariantCulture)))
            .ToList();
        var results = readers.Select(r => Task.Run(() => r.StandardOutput.ReadToEnd())).ToList();
        string writerOut = writer.StandardOutput.ReadToEnd();
        writer.WaitForExit();
        long hits = 0, damaged = 0;
        foreach (var (reader, result) in readers.Zip(results))
        {
            reader.WaitForExit();
            var line = result.Result.Split('\n', StringSplitOptions.RemoveEmptyEntries).Last().Split(' ');
            Assert.Equal("0", line[5]); // wrong bytes
            hits += long.Parse(line[1]);
            damaged += long.Parse(line[7]);
            reader.Dispose();
        }
        Assert.True(hits > 100, $"readers hit only {hits} times");
        output.WriteLine($"{seconds:F0} s, writer {writerOut.Trim()}: 3 readers, {hits} verified hits, {damaged} rewritten-under-reader misses, 0 wrong bytes.");
    }

    [Fact]
    public void TwoWriterProcessesStoreIntoOnePoolAndEveryAcknowledgedEntryIsThere()
    {
        // 1. Two writer processes put their own keys into one pool at once (no eviction: the pool holds them all).
        Process Writer(int seed) => ChildProcess.Start(ChildProcess.TestChildDll, "writer", _temp.Path, "Batched", seed.ToString(), "400", "150");
        using (var first = SlotPool.Open(Options(slots: 400))) { } // created once, so both open it
        using var a = Writer(1);
        using var b = Writer(2);
        var acks = new[] { new List<long>(), new List<long>() };
        var readers = new[] { a, b }.Select((child, n) => Task.Run(() =>
        {
            string? line;
            while ((line = child.StandardOutput.ReadLine()) is not null)
                if (line.StartsWith("ack ", StringComparison.Ordinal))
                {
                    lock (acks) acks[n].Add(long.Parse(line[4..]));
                    if (acks[n].Count >= 150) break;
                }
        })).ToArray();
        Task.WaitAll(readers, TimeSpan.FromSeconds(60));
        a.Kill();
        b.Kill();
        a.WaitForExit();
        b.WaitForExit();

        // 2. Every acknowledged entry of both is in the pool and served byte for byte.
        using var pool = SlotPool.Open(Options(slots: 400) with { WriterLockTimeout = TimeSpan.FromSeconds(5) });
        for (int n = 0; n < 2; n++)
        {
            Assert.True(acks[n].Count >= 150, $"writer {n + 1} acknowledged only {acks[n].Count} puts");
            foreach (var index in acks[n])
                Assert.True(pool.Contains(TestPayloads.Key(n + 1, index)), $"writer {n + 1}'s acknowledged entry {index} is missing");
        }
        var (served, missed) = CheckEverything(pool);
        Assert.Equal(0, missed);
        output.WriteLine($"two writer processes: {acks[0].Count} + {acks[1].Count} acknowledged puts, {served} entries served byte for byte, 0 wrong.");
    }

    [Fact]
    public void KillingOneOfTwoWritersMidPutNeverServesWrongBytesAndTheOtherGoesOn()
    {
        // 1. Writer 1 puts until killed; writer 2 is started and SIGKILLed mid-put ten times beside it.
        using (SlotPool.Open(Options(slots: 64))) { }
        using var steady = ChildProcess.Start(ChildProcess.TestChildDll, "writer", _temp.Path, "Batched", "1", "64");
        ChildProcess.WaitForLine(steady, "ready", TimeSpan.FromSeconds(60));
        var rng = new Random(5);
        for (int kill = 0; kill < 10; kill++)
        {
            using var victim = ChildProcess.Start(ChildProcess.TestChildDll, "writer", _temp.Path, "Batched", (100 + kill).ToString(), "64");
            ChildProcess.WaitForLine(victim, "ready", TimeSpan.FromSeconds(60));
            Thread.Sleep(rng.Next(5, 60));
            victim.Kill();
            victim.WaitForExit();
        }
        // 2. The steady writer still stores (its acks keep coming), then it is killed too.
        Assert.True(steady.StandardOutput.ReadLine() is not null && !steady.HasExited, "the steady writer stopped");
        steady.Kill();
        steady.WaitForExit();

        // 3. Reopened: whatever is indexed is served byte for byte, nothing wrong.
        using var pool = SlotPool.Open(Options(slots: 64) with { WriterLockTimeout = TimeSpan.FromSeconds(5) });
        var (served, missed) = CheckEverything(pool);
        Assert.True(served > 0, "nothing survived");
        output.WriteLine($"10 SIGKILLs of a second writer mid-put: {served} entries served byte for byte, {missed} misses, 0 wrong bytes.");
    }

    [Fact]
    public void AChangeInProgressHoldsOffOthersAndItsLockIsFreeWithin100MsOfTheHolderDying()
    {
        using var holder = ChildProcess.Start(ChildProcess.TestChildDll, "hold", _temp.Path);
        ChildProcess.WaitForLine(holder, "ready", TimeSpan.FromSeconds(60));
        var e = Assert.Throws<SlotPoolLockedException>(() => SlotPool.Open(Options(slots: 4)));
        Assert.Contains("held the slot pool's lock", e.Message);
        using (var reader = SlotPool.Open(Options(slots: 4) with { ReadOnly = true })) Assert.Equal(0, reader.GetStats().Entries);

        var waiting = Task.Run(() =>
        {
            using var pool = SlotPool.Open(Options(slots: 4) with { WriterLockTimeout = TimeSpan.FromSeconds(30) });
            return Stopwatch.GetTimestamp();
        });
        Thread.Sleep(200);
        Assert.False(waiting.IsCompleted);
        long killedAt = Stopwatch.GetTimestamp();
        holder.Kill();
        long acquiredAt = waiting.Result;
        var handover = Stopwatch.GetElapsedTime(killedAt, acquiredAt);
        output.WriteLine($"lock handed over {handover.TotalMilliseconds:F1} ms after SIGKILL");
        Assert.True(handover < TimeSpan.FromMilliseconds(100), $"handover took {handover.TotalMilliseconds} ms");
    }

    [Fact]
    public void AFullDiskFailsCreationCleanlyAndLaterWriteFailuresKeepEarlierEntries()
    {
        var mount = _temp.Sub("small-fs");
        Directory.CreateDirectory(mount);
        bool mounted = ChildProcess.Output("sh", "-c", $"mount -t tmpfs -o size=1m tmpfs '{mount}' 2>&1 && echo mounted").EndsWith("mounted");
        try
        {
            if (mounted) RealFullDisk(mount);
            else output.WriteLine("could not mount a small filesystem here (not root?): checking injected write failures only");
            InjectedWriteFailures();
        }
        finally
        {
            if (mounted) ChildProcess.Output("umount", mount);
        }
    }

    private void RealFullDisk(string mount)
    {
        // 1. A pool larger than the 1 MiB filesystem opens (its file grows on demand); puts succeed until the disk
        //    is full, then fail with a clear error; every entry stored before stays readable.
        var big = Path.Combine(mount, "big");
        using (var grows = SlotPool.Open(Options(big, slots: 40)))
        {
            int stored = 0;
            IOException? full = null;
            for (int i = 0; i < 40 && full is null; i++)
                try
                {
                    PutKey(grows, 1000 + i);
                    stored++;
                }
                catch (IOException e) { full = e; }
            Assert.NotNull(full);
            Assert.Contains("Entries stored earlier are unaffected", full!.Message);
            Assert.InRange(stored, 1, 39);
            Assert.Equal(stored, Enumerable.Range(1000, stored).Count(i => Served(grows, i)));
            output.WriteLine($"real 1 MiB tmpfs: a 2.7 MiB pool took {stored} entries, then a put failed cleanly ({full.Message.Split(':')[0]}); all {stored} served");
        }
        Directory.Delete(big, recursive: true);

        // 2. A pool that fits; fill the rest of the disk; writes fail cleanly; earlier entries stay.
        var fits = Path.Combine(mount, "fits");
        using var pool = SlotPool.Open(Options(fits, slots: 8));
        for (int i = 0; i < 4; i++) PutKey(pool, i);
        try
        {
            using var filler = new FileStream(Path.Combine(mount, "filler"), FileMode.Create);
            var block = new byte[4096];
            while (true) filler.Write(block);
        }
        catch (IOException) { }
        int failures = 0, written = 0;
        for (int i = 4; i < 5000 && failures == 0; i++)
            try
            {
                PutKey(pool, i);
                pool.Remove(TestPayloads.Key(1, i));
                written++;
            }
            catch (IOException) { failures++; }
        Assert.True(failures > 0, "a full disk never failed a write");
        Assert.Equal(4, Enumerable.Range(0, 4).Count(i => Served(pool, i)));
        output.WriteLine($"after filling the disk, {written} put/remove pairs fit, then writes failed with a clear error; earlier entries served.");
        File.Delete(Path.Combine(mount, "filler"));
        PutKey(pool, 500);
        Assert.True(Served(pool, 500));
    }

    private void InjectedWriteFailures()
    {
        // 1. The disk fails every write (no space) after three puts: the fourth fails cleanly, the three are served; healed, puts go on.
        var dir = _temp.Sub("injected");
        Directory.CreateDirectory(dir);
        var faults = new FaultPlan();
        var options = Options(dir, slots: 8) with { Medium = new FaultMedium(new FileMedium(dir), faults) };
        using (var pool = SlotPool.Open(options))
        {
            for (int i = 0; i < 3; i++) PutKey(pool, i);
            faults.NoSpaceFrom(file: null, offset: 0);
            var e = Assert.Throws<IOException>(() => PutKey(pool, 3));
            Assert.Contains("Entries stored earlier are unaffected", e.Message);
            for (int i = 0; i < 3; i++) Assert.True(Served(pool, i));
            faults.Heal();
            PutKey(pool, 4);
        }
        using var reopened = SlotPool.Open(Options(dir, slots: 8));
        Assert.Equal(4, CheckEverything(reopened).Served);

        // 2. Creating a pool on a disk that fails every write leaves nothing behind.
        var failCreate = Options(_temp.Sub("injected-create"), slots: 8);
        Directory.CreateDirectory(failCreate.Directory);
        failCreate = failCreate with { Medium = new FaultMedium(new FileMedium(failCreate.Directory), new FaultPlan().FailWrites()) };
        Assert.Throws<IOException>(() => SlotPool.Open(failCreate));
        Assert.False(File.Exists(Path.Combine(failCreate.Directory, "slots.bin")));
        Assert.False(File.Exists(Path.Combine(failCreate.Directory, "slots.bin.creating")));
        Assert.Empty(Directory.GetFiles(failCreate.Directory, "*.tmp"));
    }

    private static void PutKey(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(1, i);
        pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
    }

    private static bool Served(SlotPool pool, int i)
    {
        var key = TestPayloads.Key(1, i);
        var buffer = new byte[pool.PayloadCapacity];
        return pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int n) && buffer.AsSpan(0, n).SequenceEqual(TestPayloads.Payload(key));
    }

    private static void WriteAt(string path, long offset, byte[] bytes)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
        f.Position = offset;
        f.Write(bytes);
    }

    public void Dispose() => _temp.Dispose();
}

/// <summary>Tests that start many child processes run one class at a time.</summary>
[CollectionDefinition(nameof(ProcessHeavyTests), DisableParallelization = true)]
public sealed class ProcessHeavyTests;
