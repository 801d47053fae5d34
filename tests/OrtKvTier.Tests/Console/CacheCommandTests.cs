using System.Text.Json;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

public sealed class CacheCommandTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void StatsVerifyAndClearReportThePoolsUnderACacheDirectory()
    {
        var poolDir = _temp.Sub("model-a");
        using (var pool = SlotPool.Open(new SlotPoolOptions { Directory = poolDir, Identity = TestPayloads.Identity, CapacitySlots = 8 }))
            for (int i = 0; i < 3; i++)
            {
                var key = TestPayloads.Key(2, i);
                pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            }

        var stats = ChildProcess.Console("cache", "stats", "--cache-dir", _temp.Path, "--json");
        Assert.True(stats.ExitCode == 0, stats.StdErr);
        var pool0 = JsonDocument.Parse(stats.StdOut).RootElement.GetProperty("pools")[0];
        Assert.Equal(3, pool0.GetProperty("entries").GetInt32());
        Assert.Equal(8, pool0.GetProperty("slots").GetInt32());
        Assert.Equal("4x2x64 fp16, 32-token chunks", pool0.GetProperty("layout").GetString());

        SlotFileDamage.FlipByte(poolDir, slot: 1, offsetInSlot: 5000);
        var verify = ChildProcess.Console("cache", "verify", "--cache-dir", poolDir, "--json");
        Assert.Equal(3, verify.ExitCode); // damage found
        var report = JsonDocument.Parse(verify.StdOut).RootElement.GetProperty("pools")[0];
        Assert.Equal((3, 2, 1), (report.GetProperty("checked").GetInt32(), report.GetProperty("valid").GetInt32(), report.GetProperty("dropped").GetInt32()));

        var clear = ChildProcess.Console("cache", "clear", "--cache-dir", _temp.Path);
        Assert.Equal(0, clear.ExitCode);
        Assert.Contains("cleared", clear.StdOut);
        using var reopened = SlotPool.OpenExisting(poolDir);
        Assert.Equal(0, reopened.GetStats().Entries);

        var missing = ChildProcess.Console("cache", "stats", "--cache-dir", _temp.Sub("nothing"));
        Assert.NotEqual(0, missing.ExitCode);
        Assert.Contains("No slot pool under", missing.StdErr);
    }

    [Fact]
    public void ThePoolFileGrowsOnDemandAndClearGivesItsBlocksBack()
    {
        var poolDir = _temp.Sub("grows");
        using (var pool = SlotPool.Open(new SlotPoolOptions { Directory = poolDir, Identity = TestPayloads.Identity, CapacitySlots = 64 }))
        {
            Assert.True(AllocatedBytes(poolDir) < 64 * 1024, $"a new pool took {AllocatedBytes(poolDir)} bytes of disk");
            for (int i = 0; i < 40; i++)
            {
                var key = TestPayloads.Key(5, i);
                pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            }
        }
        long filled = AllocatedBytes(poolDir);
        Assert.True(filled >= 40 * 65536L, $"40 entries of 64 KiB took {filled} bytes of disk");

        var clear = ChildProcess.Console("cache", "clear", "--cache-dir", poolDir);
        Assert.True(clear.ExitCode == 0, clear.StdErr);
        Assert.True(AllocatedBytes(poolDir) < filled / 8, $"cleared pool still takes {AllocatedBytes(poolDir)} bytes of disk");
        using var reopened = SlotPool.OpenExisting(poolDir);
        Assert.Equal(0, reopened.GetStats().Entries); // and nothing comes back from the slot headers
    }

    [Fact]
    public void ListShowsPoolsByLastUseAndPruneDeletesTheOldestButNotOneBeingChanged()
    {
        string[] dirs = [_temp.Sub("old"), _temp.Sub("middle"), _temp.Sub("new")];
        for (int p = 0; p < dirs.Length; p++)
        {
            using (var pool = SlotPool.Open(new SlotPoolOptions { Directory = dirs[p], Identity = TestPayloads.Identity, CapacitySlots = 4 }))
                pool.Put(TestPayloads.Key(6, p), TestPayloads.Tokens(TestPayloads.Key(6, p)), TestPayloads.Payload(TestPayloads.Key(6, p)));
            foreach (var file in Directory.GetFiles(dirs[p])) File.SetLastWriteTimeUtc(file, DateTime.UtcNow.AddDays(-10 * (dirs.Length - p)));
        }
        var list = ChildProcess.Console("cache", "list", "--cache-dir", _temp.Path, "--json");
        Assert.True(list.ExitCode == 0, list.StdErr);
        var listed = JsonDocument.Parse(list.StdOut).RootElement.GetProperty("pools").EnumerateArray().Select(p => p.GetProperty("directory").GetString()!).ToArray();
        Assert.Equal([dirs[2], dirs[1], dirs[0]], listed);

        using (var changing = SlotPool.HoldWriterLock(dirs[0], TimeSpan.Zero)) // a change in progress in another process
        {
            foreach (var file in Directory.GetFiles(dirs[0])) File.SetLastWriteTimeUtc(file, DateTime.UtcNow.AddDays(-30));
            var prune = ChildProcess.Console("cache", "prune", "--cache-dir", _temp.Path, "--older-than", "15d", "--json");
            Assert.True(prune.ExitCode == 0, prune.StdErr);
            var result = JsonDocument.Parse(prune.StdOut).RootElement;
            Assert.Equal([dirs[1]], result.GetProperty("deleted").EnumerateArray().Select(d => d.GetString()!));
            Assert.Equal([dirs[0]], result.GetProperty("in_use").EnumerateArray().Select(d => d.GetString()!));
        }
        Assert.False(Directory.Exists(dirs[1]));
        Assert.True(Directory.Exists(dirs[0]) && Directory.Exists(dirs[2]));
        var keep = ChildProcess.Console("cache", "prune", "--cache-dir", _temp.Path, "--keep", "1");
        Assert.True(keep.ExitCode == 0, keep.StdErr);
        Assert.Single(Directory.GetDirectories(_temp.Path));
    }

    [Fact]
    public void APoolOfAnotherFormatVersionIsRefusedNamingBothVersionsListedAsUnreadableAndPrunedOnRequest()
    {
        var dir = _temp.Sub("old-version");
        var options = new SlotPoolOptions { Directory = dir, Identity = TestPayloads.Identity, CapacitySlots = 4 };
        using (var pool = SlotPool.Open(options)) pool.Put(TestPayloads.Key(6, 9), TestPayloads.Tokens(TestPayloads.Key(6, 9)), TestPayloads.Payload(TestPayloads.Key(6, 9)));
        // The header of a pool that version 2 of the format wrote (same fields, its own checksum).
        var data = Path.Combine(dir, StoredFormats.DataFileName);
        var header = File.ReadAllBytes(data)[..StoredFormats.FileHeaderBytes];
        BitConverter.TryWriteBytes(header.AsSpan(StoredFormats.FhVersion), 2u);
        BitConverter.TryWriteBytes(header.AsSpan(StoredFormats.FhChecksum), System.IO.Hashing.XxHash64.HashToUInt64(header.AsSpan(0, StoredFormats.FhChecksummed)));
        using (var f = new FileStream(data, FileMode.Open, FileAccess.Write)) f.Write(header);

        var refused = Assert.Throws<SlotPoolMismatchException>(() => SlotPool.Open(options));
        Assert.Contains($"format version 2; this library reads version {StoredFormats.FormatVersion}", refused.Message);

        var list = ChildProcess.Console("cache", "list", "--cache-dir", _temp.Path, "--json");
        Assert.True(list.ExitCode == 0, list.StdErr);
        var unreadable = Assert.Single(JsonDocument.Parse(list.StdOut).RootElement.GetProperty("unreadable").EnumerateArray());
        Assert.Equal(dir, unreadable.GetProperty("directory").GetString());
        Assert.Contains("format version 2; this library reads version", unreadable.GetProperty("reason").GetString());

        var prune = ChildProcess.Console("cache", "prune", "--cache-dir", _temp.Path, "--other-versions", "--json");
        Assert.True(prune.ExitCode == 0, prune.StdErr);
        Assert.Equal([dir], JsonDocument.Parse(prune.StdOut).RootElement.GetProperty("deleted").EnumerateArray().Select(d => d.GetString()!));
        Assert.False(Directory.Exists(dir));
    }

    /// <summary>Disk blocks a pool's files take (what <c>du</c> counts), from <c>stat</c>.</summary>
    private static long AllocatedBytes(string poolDir) =>
        Directory.GetFiles(poolDir).Sum(f => long.Parse(ChildProcess.Output("stat", "-c", "%b", f)) * 512);

    [Fact]
    public void BenchDiskPrintsRatiosMeasuredInOneRun()
    {
        var (code, stdout, stderr) = ChildProcess.Bench("disk", "--layers", "2", "--kv-heads", "2", "--head-size", "64",
            "--chunk-tokens", "64", "--chunks", "40", "--rounds", "1", "--dir", _temp.Sub("bench"), "--json");
        Assert.True(code == 0, stderr);
        var root = JsonDocument.Parse(stdout).RootElement;
        foreach (var field in new[] { "put_gbps", "get_gbps", "memcpy_gbps", "open_ms", "first_fill_gbps", "open_10k_entries_ms" })
            Assert.True(root.GetProperty(field).GetDouble() > 0, field);
        Assert.Equal(40, root.GetProperty("chunks").GetInt32());
    }

    public void Dispose() => _temp.Dispose();
}
