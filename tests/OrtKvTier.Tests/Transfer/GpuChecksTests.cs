using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Transfer;

/// <summary>The GPU checks console, run as a child process on this machine's CPU: what the GPU machine runs, minus the device.</summary>
public sealed class GpuChecksTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void TheChecksPassAndWriteTheirReport()
    {
        var (exit, stdout, stderr) = ChildProcess.Run(ChildProcess.GpuChecksDll, TimeSpan.FromMinutes(5),
            "--model", TestPaths.TinyFp16, "--tokens", "96", "--out", _temp.Path);
        Assert.True(exit == 0, $"exit {exit}\n{stdout}\n{stderr}");
        Assert.Contains("OrtKvTier GPU checks on ", stdout);

        using var report = JsonDocument.Parse(File.ReadAllText(Path.Combine(_temp.Path, "gpu-checks.json")));
        var root = report.RootElement;
        bool onCpu = root.GetProperty("device").GetString() == "CPU"; // a machine with CUDA runs the device parts
        Assert.Equal(0, root.GetProperty("errors").GetArrayLength());
        var parity = root.GetProperty("parity").EnumerateArray().ToList();
        Assert.Equal(["growing past", "shared buffer"], parity.Select(p => p.GetProperty("mode").GetString()));
        Assert.All(parity, p =>
        {
            Assert.True(p.GetProperty("tokens_equal_cpu").GetBoolean());
            if (onCpu) Assert.True(p.GetProperty("logits_bitwise_equal").GetBoolean()); // on the CPU a restored prefix is exact
            Assert.True(p.GetProperty("device_tier_tokens_equal_cpu").GetBoolean());
            Assert.True(p.GetProperty("background_capture_tokens_equal_cpu").GetBoolean());
            Assert.True(p.GetProperty("restored_tokens").GetInt32() > 0);
        });
        var throughput = Assert.Single(root.GetProperty("throughput").EnumerateArray());
        Assert.Equal(96, throughput.GetProperty("tokens").GetInt32());
        Assert.True(throughput.GetProperty("restore_gbps").GetDouble() > 0);
        Assert.True(throughput.GetProperty("capture_gbps").GetDouble() > 0);
    }

    public void Dispose() => _temp.Dispose();
}
