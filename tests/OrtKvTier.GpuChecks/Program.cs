using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.GpuChecks;
using OrtKvTier.Model;

// ortkv-gpu-checks [--model DIR] [--tokens 2048,8192] [--out DIR]
// (a) restored-prefix logits = full-prefill logits on the device, both KV modes; greedy tokens = the CPU loop's
// (b) restore and capture GB/s for a Llama-3-8B-like layout through a warm slot file, beside plain pinned→device copies
// (c) a table last, JSON in $OUT (or --out)
var options = Options.Parse(args);
var report = new Report();
using (var probe = KvModel.Load(options.Model, new KvModelOptions { Device = ExecutionDevice.Cuda }))
{
    report.Device = probe.Device == ExecutionDevice.Cuda ? $"CUDA ({probe.EpDevice!.EpVendor} device {probe.EpDevice.HardwareDevice.DeviceId})" : "CPU";
    report.DeviceNote = probe.DeviceNote;
    Console.WriteLine($"device: {report.Device}{(probe.DeviceNote is null ? "" : $" — {probe.DeviceNote}")}");
}

foreach (bool shared in new[] { false, true })
    try
    {
        report.Parity.Add(ParityCheck.Run(options.Model, shared));
    }
    catch (Exception e)
    {
        report.Errors.Add($"parity {(shared ? "shared buffer" : "growing past")}: {e.GetType().Name}: {e.Message}");
        Console.WriteLine(report.Errors[^1]);
    }

foreach (int tokens in options.Tokens)
    try
    {
        report.Throughput.Add(ThroughputCheck.Run(tokens, options.ScratchDirectory));
    }
    catch (Exception e)
    {
        report.Errors.Add($"throughput {tokens} tokens: {e.GetType().Name}: {e.Message}");
        Console.WriteLine(report.Errors[^1]);
    }

Directory.CreateDirectory(options.OutDirectory);
var jsonPath = Path.Combine(options.OutDirectory, "gpu-checks.json");
File.WriteAllText(jsonPath, JsonSerializer.Serialize(report, ReportJson.Default.Report));
report.PrintTable();
Console.WriteLine($"json: {jsonPath}");
return report.Errors.Count == 0 && report.Parity.All(p => p.TokensEqualCpu && p.DeviceTierTokensEqualCpu && p.BackgroundCaptureTokensEqualCpu) ? 0 : 1;
