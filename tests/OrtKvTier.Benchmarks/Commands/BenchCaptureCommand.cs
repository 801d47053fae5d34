using System.Diagnostics;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench capture</c>: what storing the prompt's chunks after the first token costs the next token.
/// Each rep prefills a new prompt (a miss), generates, and captures the prompt after the first token
/// either inline on the request's thread or in the background while generation goes on; the two
/// alternate rep by rep on one cache, so both see the same machine load and the same cache state.
/// </summary>
internal static class BenchCaptureCommand
{
    public const string Usage =
        "  capture [--model DIR] [--prompt-tokens N] [--new-tokens M] [--reps R] [--intra-op-threads T] [--json]\n" +
        "    (default: models/bench, 2048 prompt tokens, 8 new, 5 reps, ONNX Runtime's thread count)";

    private sealed record Sample(double CaptureCallMs, double SecondTokenMs, double LaterTokenMs);

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        int promptTokens = cl.Int("prompt-tokens", 2048, 32);
        int newTokens = cl.Int("new-tokens", 8, 3);
        int reps = cl.Int("reps", 5, 1);
        int threads = cl.Int("intra-op-threads", 0, 0);
        bool json = cl.Flag("json");
        cl.RejectUnknown();
        var cacheDir = Path.Combine(Path.GetTempPath(), "ortkv-bench-capture-" + Guid.NewGuid().ToString("N")[..8]);

        using var model = KvModel.Load(folder, new KvModelOptions { IntraOpThreads = threads });
        var search = SearchOptions.FromConfig(model) with { DoSample = false, MaxLength = promptTokens + newTokens };
        var inline = new List<Sample>();
        var background = new List<Sample>();
        try
        {
            using var cache = PrefixCache.Open(model, new PrefixCacheOptions
            {
                Directory = cacheDir, DiskCapacityBytes = Math.Max(256L << 20, (2L * reps + 2) * promptTokens * model.Layout.BytesPerToken),
            });
            Progress($"model {model.Folder} ({model.Layout.ShapeKey}), {promptTokens}-token prompts ({promptTokens * model.Layout.BytesPerToken / 1e6:F1} MB of KV), {newTokens} new tokens, {reps} reps, " +
                $"{(threads == 0 ? "ONNX Runtime's default" : threads.ToString(System.Globalization.CultureInfo.InvariantCulture))} intra-op threads on {Environment.ProcessorCount} cores");
            Measure(model, search, cache, BenchModel.Tokens(promptTokens, 500, model.VocabSize), newTokens, inBackground: true); // warm-up
            for (int rep = 0; rep < reps; rep++)
                foreach (bool inBackground in rep % 2 == 0 ? new[] { false, true } : [true, false])
                {
                    var prompt = BenchModel.Tokens(promptTokens, 600 + 2 * rep + (inBackground ? 1 : 0), model.VocabSize);
                    var sample = Measure(model, search, cache, prompt, newTokens, inBackground);
                    (inBackground ? background : inline).Add(sample);
                    Progress($"rep {rep + 1}/{reps} {(inBackground ? "background" : "inline    ")}: capture call {sample.CaptureCallMs:F2} ms, second token {sample.SecondTokenMs:F1} ms, later tokens {sample.LaterTokenMs:F1} ms");
                }
        }
        finally
        {
            BenchModel.TryDelete(cacheDir);
        }

        double Median(List<Sample> samples, Func<Sample, double> pick) => BenchModel.Median(samples.Select(pick));
        double ratio = Median(inline, s => s.SecondTokenMs) / Median(background, s => s.SecondTokenMs);
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteString("model", model.Folder);
                w.WriteString("layout", model.Layout.ShapeKey);
                w.WriteNumber("prompt_tokens", promptTokens);
                w.WriteNumber("prompt_kv_bytes", (long)promptTokens * model.Layout.BytesPerToken);
                w.WriteNumber("reps", reps);
                w.WriteNumber("intra_op_threads", threads);
                w.WriteNumber("cores", Environment.ProcessorCount);
                foreach (var (name, samples) in new[] { ("inline", inline), ("background", background) })
                {
                    w.WriteStartObject(name);
                    w.WriteNumber("capture_call_ms", Math.Round(Median(samples, s => s.CaptureCallMs), 3));
                    w.WriteNumber("second_token_ms", Math.Round(Median(samples, s => s.SecondTokenMs), 2));
                    w.WriteNumber("later_token_ms", Math.Round(Median(samples, s => s.LaterTokenMs), 2));
                    w.WriteEndObject();
                }
                w.WriteNumber("second_token_inline_over_background", Math.Round(ratio, 3));
            });
        else
        {
            System.Console.WriteLine($"{"capture",-11} {"call_ms",8} {"second_token_ms",16} {"later_token_ms",15}");
            foreach (var (name, samples) in new[] { ("inline", inline), ("background", background) })
                System.Console.WriteLine($"{name,-11} {Median(samples, s => s.CaptureCallMs),8:F2} {Median(samples, s => s.SecondTokenMs),16:F1} {Median(samples, s => s.LaterTokenMs),15:F1}");
            System.Console.WriteLine($"second token, inline / background = {ratio:F2}x (medians of {reps} reps each)");
        }
        return 0;
    }

    /// <summary>One request: prefill, first token, the prompt's capture, then the timed tokens after it.</summary>
    private static Sample Measure(KvModel model, SearchOptions search, PrefixCache cache, int[] prompt, int newTokens, bool inBackground)
    {
        using var generator = new KvGenerator(model, search, cache);
        generator.AppendTokens(prompt);
        generator.GenerateNextToken();
        long start = Stopwatch.GetTimestamp();
        var capture = inBackground ? generator.CaptureToCacheInBackground() : Task.FromResult(generator.CaptureToCache());
        double callMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        generator.GenerateNextToken();
        double secondMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        var later = new List<double>();
        while (!generator.IsDone)
        {
            long step = Stopwatch.GetTimestamp();
            generator.GenerateNextToken();
            later.Add(Stopwatch.GetElapsedTime(step).TotalMilliseconds);
        }
        if (capture.GetAwaiter().GetResult() != prompt.Length / cache.ChunkTokens)
            throw new InvalidOperationException($"The capture stored {capture.Result} chunks; expected {prompt.Length / cache.ChunkTokens}.");
        return new Sample(callMs, secondMs, BenchModel.Median(later));
    }

    private static void Progress(string line) => System.Console.Error.WriteLine(line);
}
