using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.GpuChecks;

/// <summary>
/// (b): a Llama-3-8B-like KV layout (32 layers × 8 kv heads × 128, fp16: 128 KiB per token). Capture:
/// past tensors in target memory → staging → slots (written and flushed). Restore: a warm slot file →
/// staging (verified; tensors copied to target memory as soon as staged) → new past tensors in target memory.
/// Beside them, plain staging → target copies.
/// </summary>
internal static class ThroughputCheck
{
    private static readonly KvLayout Llama8B = Layout(32, 8, 128);

    public static ThroughputResult Run(int tokens, string scratch)
    {
        var devices = CudaExecutionProvider.Devices(null, out _);
        var device = devices.Count > 0 ? devices[0] : null;
        using var transfer = new DeviceKvTransfer(Llama8B, device);
        long bytes = tokens * Llama8B.BytesPerToken;
        var prompt = Enumerable.Range(0, tokens + 2).Select(i => i % 50000).ToArray();
        var fingerprint = new ModelFingerprint(new UInt128(0x6C6C616D61, (ulong)tokens));
        var directory = Path.Combine(scratch, $"llama8b-{tokens}");
        var options = new PrefixCacheOptions
        {
            Directory = directory, ChunkTokens = PrefixCacheOptions.DefaultChunkTokens,
            DiskCapacityBytes = bytes + (256L << 20), HostBudgetBytes = 0, Durability = Storage.Durability.None, AlwaysRestore = true,
        };
        try
        {
            // Capture: target-memory presents → staging → slots.
            var source = transfer.AllocatePast(tokens);
            var staging = transfer.AllocateStaging(tokens);
            Fill(staging);
            transfer.CopyTensors(staging, source);
            double captureMs, captureToPinnedMs;
            using (var cache = new PrefixCache(fingerprint, Llama8B, options))
            {
                var clock = Stopwatch.StartNew();
                transfer.CopyTensors(source, staging);
                captureToPinnedMs = clock.Elapsed.TotalMilliseconds;
                new PrefixCacheHook(cache, Llama8B).Capture(prompt.AsSpan(0, tokens), staging);
                cache.Flush();
                captureMs = clock.Elapsed.TotalMilliseconds;
            }

            // Plain copies of the same bytes, staging → target memory.
            var copyMs = new List<double>();
            for (int i = 0; i < 3; i++)
            {
                var clock = Stopwatch.StartNew();
                transfer.CopyTensors(staging, source);
                copyMs.Add(clock.Elapsed.TotalMilliseconds);
            }
            Dispose(source);
            Dispose(staging);

            // Restore from the warm slot file, each time in a fresh cache (empty host tier); the first
            // pins the staging buffers, later ones reuse them as a long-running process does. Best of 3.
            var restores = new List<(double Total, double Lookup, double Gather, double Copy)>();
            for (int i = 0; i < 4; i++)
            {
                using var cache = new PrefixCache(fingerprint, Llama8B, options);
                var clock = Stopwatch.StartNew();
                var (past, report, copy) = transfer.Restore(cache, prompt);
                restores.Add((clock.Elapsed.TotalMilliseconds, report.LookupMs, report.RestoreMs, copy));
                Dispose(past);
                if (report.RestoredTokens != tokens) throw new InvalidOperationException($"Restored {report.RestoredTokens} of {tokens} tokens.");
                Console.WriteLine($"  restore {i + 1}: {restores[^1].Total:F1} ms (lookup {report.LookupMs:F1}, slots → staging {report.RestoreMs:F1}, copies to target left after that {copy:F1})");
            }
            var best = restores.Skip(1).MinBy(r => r.Total);

            // A long-running process keeps its pool open. Host tier off, so every restore reads slots.
            var steady = new List<double>();
            using (var cache = new PrefixCache(fingerprint, Llama8B, options))
                for (int i = 0; i < 4; i++)
                {
                    var clock = Stopwatch.StartNew();
                    var (past, report, copy) = transfer.Restore(cache, prompt);
                    steady.Add(clock.Elapsed.TotalMilliseconds);
                    Dispose(past);
                    Console.WriteLine($"  restore, pool kept open {i + 1}: {steady[^1]:F1} ms (slots → staging {report.RestoreMs:F1}, copies to target left after that {copy:F1})");
                }

            // Capture again into the now full pool (the steady state of a cache: slots are rewritten).
            double rewriteMs;
            using (var cache = new PrefixCache(fingerprint, Llama8B, options))
            {
                var staged = transfer.AllocateStaging(tokens);
                Fill(staged);
                var other = prompt.Select(t => t + 1).ToArray();
                var clock = Stopwatch.StartNew();
                new PrefixCacheHook(cache, Llama8B).Capture(other.AsSpan(0, tokens), staged);
                cache.Flush();
                rewriteMs = clock.Elapsed.TotalMilliseconds;
                Dispose(staged);
            }
            var result = new ThroughputResult(tokens, bytes, device is null ? "host memory" : "device memory",
                Gbps(bytes, best.Total), Gbps(bytes, best.Gather), Math.Round(best.Copy, 2), Gbps(bytes, restores[0].Total),
                Gbps(bytes, steady.Skip(1).Min()), Gbps(bytes, captureMs), Gbps(bytes, rewriteMs), Gbps(bytes, captureToPinnedMs), Gbps(bytes, copyMs.Min()));
            Console.WriteLine($"{tokens} tokens ({bytes / 1e6:F0} MB) into {result.Target}: restore {result.RestoreGbps:F2} GB/s after reopening the pool, " +
                $"{result.RestoreOpenPoolGbps:F2} GB/s with it kept open (first, pinning staging: {result.FirstRestoreGbps:F2}); " +
                $"capture to slots {result.CaptureGbps:F2} GB/s fresh file, {result.CaptureRewriteGbps:F2} GB/s rewriting ({result.CaptureToPinnedGbps:F2} GB/s device → pinned); plain staging copy {result.PlainCopyGbps:F2} GB/s");
            return result;
        }
        finally
        {
            try { Directory.Delete(directory, recursive: true); } catch (IOException) { }
        }
    }

    private static double Gbps(long bytes, double ms) => bytes / ms / 1e6;

    private static void Fill(OrtValue[] values)
    {
        var random = new Random(8);
        foreach (var v in values) random.NextBytes(v.GetTensorMutableRawData());
    }

    private static void Dispose(OrtValue[] values)
    {
        foreach (var v in values) v.Dispose();
    }

    private static KvLayout Layout(int layers, int kvHeads, int headSize)
    {
        var names = Enumerable.Range(0, layers).ToArray();
        return new KvLayout
        {
            Layers = layers, KvHeads = kvHeads, HeadSize = headSize, ElementType = KvElementType.Float16, SharedBuffer = false, MaxLength = 131072,
            PastKeyNames = names.Select(l => $"past_key_values.{l}.key").ToArray(), PastValueNames = names.Select(l => $"past_key_values.{l}.value").ToArray(),
            PresentKeyNames = names.Select(l => $"present.{l}.key").ToArray(), PresentValueNames = names.Select(l => $"present.{l}.value").ToArray(),
        };
    }
}
