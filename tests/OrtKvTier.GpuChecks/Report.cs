using System.Text.Json.Serialization;

namespace OrtKvTier.GpuChecks;

internal sealed record ParityResult(string Mode, string Device, int RestoredTokens, bool LogitsBitwiseEqual, float MaxAbsDiff, bool TokensEqualCpu, int FirstTokenDifference,
    string DeviceTierRestore, bool DeviceTierTokensEqualCpu, bool BackgroundCaptureTokensEqualCpu);

internal sealed record ThroughputResult(int Tokens, long Bytes, string Target, double RestoreGbps, double RestoreGatherGbps, double RestoreCopyAfterStagingMs,
    double FirstRestoreGbps, double RestoreOpenPoolGbps, double CaptureGbps, double CaptureRewriteGbps, double CaptureToPinnedGbps, double PlainCopyGbps);

internal sealed class Report
{
    public string Device { get; set; } = "";
    public string? DeviceNote { get; set; }
    public List<ParityResult> Parity { get; } = [];
    public List<ThroughputResult> Throughput { get; } = [];
    public List<string> Errors { get; } = [];

    public void PrintTable()
    {
        Console.WriteLine();
        Console.WriteLine($"OrtKvTier GPU checks on {Device}");
        Console.WriteLine($"{"check",-34} {"result",-40}");
        foreach (var p in Parity)
            Console.WriteLine($"{"parity, " + p.Mode,-34} {(p.LogitsBitwiseEqual ? "logits bitwise equal" : $"logits differ (max {p.MaxAbsDiff})")}, {(p.TokensEqualCpu ? "tokens = CPU" : $"tokens differ at {p.FirstTokenDifference}")}; " +
                $"device tier: restored {p.DeviceTierRestore}, {(p.DeviceTierTokensEqualCpu ? "tokens = CPU" : "tokens differ")}; " +
                $"captured while generating: {(p.BackgroundCaptureTokensEqualCpu ? "tokens = CPU, then restored: tokens = CPU" : "tokens differ")}");
        foreach (var t in Throughput)
            Console.WriteLine($"{$"Llama-8B-like, {t.Tokens} tokens",-34} restore {t.RestoreGbps:F1} GB/s reopened / {t.RestoreOpenPoolGbps:F1} open pool, capture {t.CaptureToPinnedGbps:F1} GB/s to pinned / " +
                $"{t.CaptureRewriteGbps:F1} to slots (rewrite) / {t.CaptureGbps:F1} (fresh file), plain copy {t.PlainCopyGbps:F1} GB/s ({t.Target})");
        foreach (var e in Errors) Console.WriteLine($"{"error",-34} {e}");
    }
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(Report))]
internal sealed partial class ReportJson : JsonSerializerContext;
