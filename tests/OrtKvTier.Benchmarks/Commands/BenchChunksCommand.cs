using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench chunks</c>: how the chunk length trades restore speed against reuse granularity. One
/// prefill of the prefix through <see cref="PrefixCacheHook"/>; then, for each chunk length, capture
/// into a fresh cache, restore from host memory and from disk (reopened, warm page cache), and
/// price the half chunk a partial match recomputes on average at the measured prefill rate.
/// </summary>
internal static class BenchChunksCommand
{
    public const string Usage = "  chunks [--model DIR] [--prefix-tokens N] [--sizes 16,32,64,128,256] [--reps R] [--json]";

    private sealed record Row(int ChunkTokens, double CaptureMs, double HostRestoreMs, double DiskRestoreMs, double DiskGbps, double HalfChunkPrefillMs)
    {
        /// <summary>Expected cost of a disk hit that diverges at a random point: the restore plus the half chunk recomputed.</summary>
        public double ExpectedMs => DiskRestoreMs + HalfChunkPrefillMs;
    }

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        int prefix = cl.Int("prefix-tokens", 2048, 2);
        var sizes = (cl.String("sizes") ?? "16,32,64,128,256").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int reps = cl.Int("reps", 5, 1);
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        using var model = KvModel.Load(folder);
        var prompt = BenchModel.Tokens(prefix + 2, 2, model.VocabSize);
        var root = Path.Combine(Path.GetTempPath(), "ortkv-bench-chunks-" + Guid.NewGuid().ToString("N")[..8]);
        var rows = new List<Row>();
        try
        {
            System.Console.Error.WriteLine($"prefill of {prompt.Length} tokens on {model.Folder} ...");
            var clock = Stopwatch.StartNew();
            var presents = Prefill(model, prompt);
            double perToken = clock.Elapsed.TotalMilliseconds / prompt.Length;
            try
            {
                foreach (int chunk in sizes)
                {
                    var options = new PrefixCacheOptions { Directory = Path.Combine(root, chunk.ToString(CultureInfo.InvariantCulture)), ChunkTokens = chunk, DiskCapacityBytes = 2L * prompt.Length * model.Layout.BytesPerToken + (64L << 20), AlwaysRestore = true };
                    double capture;
                    var host = new List<double>();
                    using (var cache = PrefixCache.Open(model, options))
                    {
                        var hook = new PrefixCacheHook(cache, model.Layout);
                        clock.Restart();
                        hook.Capture(prompt, presents);
                        capture = clock.Elapsed.TotalMilliseconds;
                        cache.Flush();
                        for (int r = 0; r < reps; r++) host.Add(TimeRestore(model, hook, prompt));
                    }
                    var disk = new List<double>();
                    for (int r = 0; r < reps; r++)
                    {
                        using var reopened = PrefixCache.Open(model, options);
                        disk.Add(TimeRestore(model, new PrefixCacheHook(reopened, model.Layout), prompt));
                    }
                    double diskMs = BenchModel.Median(disk);
                    rows.Add(new Row(chunk, capture, BenchModel.Median(host), diskMs, prefix * model.Layout.BytesPerToken / diskMs / 1e6, chunk / 2.0 * perToken));
                    System.Console.Error.WriteLine($"{chunk}-token chunks done");
                }
            }
            finally
            {
                foreach (var value in presents) value.Dispose();
            }
        }
        finally
        {
            BenchModel.TryDelete(root);
        }

        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteString("model", model.Folder);
                w.WriteNumber("prefix_tokens", prefix);
                w.WriteStartArray("rows");
                foreach (var r in rows)
                {
                    w.WriteStartObject();
                    w.WriteNumber("chunk_tokens", r.ChunkTokens);
                    w.WriteNumber("capture_ms", Math.Round(r.CaptureMs, 3));
                    w.WriteNumber("host_restore_ms", Math.Round(r.HostRestoreMs, 3));
                    w.WriteNumber("disk_restore_ms", Math.Round(r.DiskRestoreMs, 3));
                    w.WriteNumber("disk_restore_gbps", Math.Round(r.DiskGbps, 2));
                    w.WriteNumber("half_chunk_prefill_ms", Math.Round(r.HalfChunkPrefillMs, 2));
                    w.WriteNumber("expected_ms", Math.Round(r.ExpectedMs, 2));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            System.Console.WriteLine($"{prefix}-token prefix, {model.Layout.ShapeKey}; medians of {reps}; expected = disk restore + half a chunk of prefill (a partial match)");
            System.Console.WriteLine($"{"chunk",6} {"capture_ms",11} {"host_ms",8} {"disk_ms",8} {"disk_GB/s",10} {"half_chunk_ms",14} {"expected_ms",12}");
            foreach (var r in rows)
                System.Console.WriteLine($"{r.ChunkTokens,6} {r.CaptureMs,11:F1} {r.HostRestoreMs,8:F1} {r.DiskRestoreMs,8:F1} {r.DiskGbps,10:F2} {r.HalfChunkPrefillMs,14:F1} {r.ExpectedMs,12:F1}");
        }
        return 0;
    }

    /// <summary>Lookup plus restore of the prompt's prefix into new past tensors, in milliseconds.</summary>
    private static double TimeRestore(KvModel model, PrefixCacheHook hook, int[] prompt)
    {
        using var binding = model.Session.CreateIoBinding();
        using var restored = hook.Restore(prompt, binding);
        if (restored.Tokens != prompt.Length - 2) throw new InvalidOperationException($"Expected {prompt.Length - 2} restored tokens, got {restored.Tokens}.");
        return restored.Report.LookupMs + restored.Report.RestoreMs;
    }

    /// <summary>Runs the prompt once and returns the present tensors (key 0, value 0, key 1, …).</summary>
    private static OrtValue[] Prefill(KvModel model, int[] prompt)
    {
        var layout = model.Layout;
        using var binding = model.Session.CreateIoBinding();
        using var runOptions = new RunOptions();
        var ids = prompt.Select(t => (long)t).ToArray();
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using var mask = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, ids.Length).ToArray(), [1, ids.Length]);
        using var logits = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, model.LogitsType, [1, ids.Length, model.VocabSize]);
        int rows = layout.SharedBuffer ? layout.MaxLength : ids.Length;
        var kv = Enumerable.Range(0, layout.Layers * 2)
            .Select(_ => OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, layout.OrtElementType, [1, layout.KvHeads, rows, layout.HeadSize])).ToArray();
        using var emptyPast = layout.SharedBuffer ? null : OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, layout.OrtElementType, [1, layout.KvHeads, 0, layout.HeadSize]);
        binding.BindInput(model.Names.InputIds, idsValue);
        binding.BindInput(model.Names.AttentionMask, mask);
        binding.BindOutput(model.Names.Logits, logits);
        for (int l = 0; l < layout.Layers; l++)
        {
            binding.BindInput(layout.PastKeyNames[l], emptyPast ?? kv[2 * l]);
            binding.BindInput(layout.PastValueNames[l], emptyPast ?? kv[2 * l + 1]);
            binding.BindOutput(layout.PresentKeyNames[l], kv[2 * l]);
            binding.BindOutput(layout.PresentValueNames[l], kv[2 * l + 1]);
        }
        model.Session.RunWithBinding(runOptions, binding);
        return kv;
    }
}
