using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench writers</c>: N processes started at once, each generating from its own prompt with the prefix cache on
/// one cache directory (a new one, then the pool the first round left), then the pool opened and counted: chunks the
/// processes said they captured against entries stored, for each N.
/// </summary>
internal static class BenchWritersCommand
{
    public const string Usage =
        "  writers [--processes 8,16,32] [--rounds R] [--model DIR] [--json]   (default: models/tiny, 2 rounds: a new pool, then the same pool)";

    private sealed record Child(int Captured, string[] Warnings, double Seconds);

    public static int Run(CommandLine cl)
    {
        if (cl.String("child") is { } role) return RunChild(role, cl);
        var counts = (cl.String("processes") ?? "8,16,32").Split(',').Select(p => int.Parse(p, CultureInfo.InvariantCulture)).ToArray();
        int rounds = cl.Int("rounds", 2, 1);
        var folder = cl.String("model") ?? RepoPaths.FindShipped("tiny");
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        var rows = new List<(int Processes, int Round, int Captured, int Stored, int Warned, double Seconds)>();
        foreach (int processes in counts)
        {
            var cacheDir = Path.Combine(Path.GetTempPath(), $"ortkv-bench-writers-{processes}-{Guid.NewGuid().ToString("N")[..8]}");
            try
            {
                int captured = 0;
                for (int round = 0; round < rounds; round++)
                {
                    var clock = Stopwatch.StartNew();
                    var children = Enumerable.Range(0, processes).Select(p => Task.Run(() => JsonSerializer.Deserialize<Child>(BenchModel.RunSelf(TimeSpan.FromMinutes(10),
                        "writers", "--child", "store", "--model", folder, "--cache-dir", cacheDir, "--prompt-seed", (round * 1000 + p).ToString(CultureInfo.InvariantCulture)))!)).ToArray();
                    Task.WaitAll(children);
                    double seconds = clock.Elapsed.TotalSeconds;
                    captured += children.Sum(c => c.Result.Captured);
                    int stored;
                    using (var pool = SlotPool.OpenExisting(Directory.GetDirectories(cacheDir).Single()))
                        stored = pool.GetStats().Entries;
                    int warned = children.Count(c => c.Result.Warnings.Length > 0);
                    rows.Add((processes, round + 1, captured, stored, warned, seconds));
                    System.Console.Error.WriteLine($"{processes} processes, round {round + 1}: {captured} chunks captured in all, {stored} stored, {warned} processes warned, {seconds:F1} s");
                }
            }
            finally
            {
                BenchModel.TryDelete(cacheDir);
            }
        }

        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteString("model", folder);
                w.WriteStartArray("runs");
                foreach (var r in rows)
                {
                    w.WriteStartObject();
                    w.WriteNumber("processes", r.Processes);
                    w.WriteString("pool", r.Round == 1 ? "new" : "existing");
                    w.WriteNumber("captured", r.Captured);
                    w.WriteNumber("stored", r.Stored);
                    w.WriteNumber("lost", r.Captured - r.Stored);
                    w.WriteNumber("processes_warned", r.Warned);
                    w.WriteNumber("seconds", Math.Round(r.Seconds, 2));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            System.Console.WriteLine($"{"processes",9} {"pool",9} {"captured",9} {"stored",7} {"lost",5} {"warned",7} {"seconds",8}");
            foreach (var r in rows)
                System.Console.WriteLine($"{r.Processes,9} {(r.Round == 1 ? "new" : "existing"),9} {r.Captured,9} {r.Stored,7} {r.Captured - r.Stored,5} {r.Warned,7} {r.Seconds,8:F1}");
        }
        return rows.All(r => r.Captured == r.Stored) ? 0 : 1;
    }

    /// <summary>One process: its own prompt (about six chunks), two new tokens, the cache on the shared directory; prints what it captured and any warning.</summary>
    private static int RunChild(string role, CommandLine cl)
    {
        if (role != "store") throw new UsageException($"Unknown bench child role '{role}'.");
        var folder = cl.String("model")!;
        var cacheDir = cl.String("cache-dir")!;
        int seed = cl.Int("prompt-seed", 0, 0);
        cl.RejectUnknown();
        var clock = Stopwatch.StartNew();
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var prompt = BenchModel.Tokens(Math.Min(6 * PrefixCacheOptions.DefaultChunkTokens + 5, model.Layout.MaxLength - 8), seed, model.VocabSize);
        GenerationResult result;
        string[] warnings;
        using (var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = cacheDir }))
        {
            result = new TextGenerator(model, tokenizer, cache).Generate(prompt, 2, SearchOptions.FromConfig(model) with { DoSample = false });
            cache.Flush();
            warnings = [.. cache.Warnings];
        }
        System.Console.WriteLine(JsonSerializer.Serialize(new Child(result.CapturedChunks, warnings, clock.Elapsed.TotalSeconds)));
        return 0;
    }
}
