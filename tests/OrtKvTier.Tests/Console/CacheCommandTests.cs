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
