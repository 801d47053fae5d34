using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Microsoft.ML.OnnxRuntimeGenAI;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench ttft</c>: time to first token for one long prompt (a cached prefix plus a new question),
/// with no cache, with a host-tier hit, with a disk hit in a fresh process and with GenAI's own
/// Generator, all in one run on the same folder and prompts.
/// </summary>
internal static class BenchTtftCommand
{
    public const string Usage =
        "  ttft [--model tiny|bench|DIR] [--prefix-tokens N[,N...]] [--suffix-tokens S] [--new-tokens M] [--reps R] [--chunk-tokens C]\n" +
        "    [--cache-dir DIR] [--encrypt] [--always-restore] [--json]   (default: models/bench, 2048 + 16 prompt tokens, 32 new, 3 reps; --encrypt: entries encrypted at rest;\n" +
        "    --always-restore: hits restore whatever is found, even when the cache would compute it;\n" +
        "    several prefix sizes: one run each, then the hit/no-cache ratios side by side; a preset too short for a size is built with a longer context)\n" +
        "  ttft --encodings exact,int8[,int4] [--remote redis://HOST:PORT] [--model ...] [--prefix-tokens N] [--reps R] [--json]\n" +
        "    (disk hit and remote hit per encoding of the lower tiers, in one run: TTFT and bytes each restore moved; no --remote: starts redis-server on loopback)";

    private sealed record Sample(double TtftMs, double LookupMs, double RestoreMs, double PrefillMs, int PrefillTokens, int CachedTokens, string Tiers, string? ComputedInstead = null);

    public static int Run(CommandLine cl)
    {
        if (cl.String("child") is { } role) return RunChild(role, cl);
        var modelArg = cl.String("model");
        var prefixes = (cl.String("prefix-tokens") ?? "2048").Split(',').Select(p => int.Parse(p, CultureInfo.InvariantCulture)).ToArray();
        if (prefixes.Any(p => p < 1)) throw new UsageException("--prefix-tokens expects positive token counts.");
        int suffix = cl.Int("suffix-tokens", 16, 2);
        int newTokens = cl.Int("new-tokens", 32, 1);
        int reps = cl.Int("reps", 3, 1);
        int chunk = cl.Int("chunk-tokens", PrefixCacheOptions.DefaultChunkTokens, 1);
        var cacheDir = cl.String("cache-dir");
        bool json = cl.Flag("json");
        bool encrypt = cl.Flag("encrypt");
        bool alwaysRestore = cl.Flag("always-restore");
        var encodings = cl.String("encodings")?.Split(',').Select(e => Enum.Parse<OrtKvTier.Tensors.KvEncoding>(e.Trim(), ignoreCase: true)).ToArray();
        var remote = cl.String("remote");
        cl.RejectUnknown();
        if (encodings is not null)
            return BenchTtftEncodings.Run(BenchModel.ResolveFor(modelArg, prefixes[0] + suffix + newTokens), prefixes[0], suffix, newTokens, reps, chunk, encodings, remote, json);
        if (remote is not null) throw new UsageException("--remote goes with --encodings (ortkv-bench remote measures the remote tier on its own).");
        var settings = new CacheSettings(chunk, cacheDir, encrypt, alwaysRestore);
        if (prefixes.Length == 1) return RunOne(BenchModel.ResolveFor(modelArg, prefixes[0] + suffix + newTokens), prefixes[0], suffix, newTokens, reps, settings, json, out _);
        var sizes = new List<(int Prefix, string Model, Dictionary<string, double> Median)>();
        foreach (int prefix in prefixes)
        {
            var folder = BenchModel.ResolveFor(modelArg, prefixes.Max() + suffix + newTokens);
            RunOne(folder, prefix, suffix, newTokens, reps, settings, json: false, out var median);
            sizes.Add((prefix, folder, median));
        }
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteString("model", sizes[0].Model);
                w.WriteStartArray("sizes");
                foreach (var (prefix, _, median) in sizes)
                {
                    w.WriteStartObject();
                    w.WriteNumber("prefix_tokens", prefix);
                    foreach (var (row, value) in median) w.WriteNumber($"{row}_ttft_ms", Math.Round(value, 2));
                    w.WriteNumber("host_hit_over_no_cache", Math.Round(median["host_hit"] / median["no_cache"], 3));
                    w.WriteNumber("disk_hit_over_no_cache_fresh", Math.Round(median["disk_hit"] / median["no_cache_fresh"], 3));
                    w.WriteNumber("disk_hit_over_host_hit", Math.Round(median["disk_hit"] / median["host_hit"], 3));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            System.Console.WriteLine($"\n{sizes[0].Model}: median TTFT (ms) by cached prefix");
            System.Console.WriteLine("(host_hit and no_cache in this process; disk_hit and no_cache_fresh in a fresh process each repetition, after the same warm-up)");
            System.Console.WriteLine($"{"prefix",7} {"no_cache",9} {"host_hit",9} {"no_cache_fresh",15} {"disk_hit",9} {"genai",9} {"host/no",8} {"disk/no_fresh",14} {"disk/host",10}");
            foreach (var (prefix, _, m) in sizes)
                System.Console.WriteLine($"{prefix,7} {m["no_cache"],9:F1} {m["host_hit"],9:F1} {m["no_cache_fresh"],15:F1} {m["disk_hit"],9:F1} {m["genai"],9:F1} {m["host_hit"] / m["no_cache"],8:F2} " +
                    $"{m["disk_hit"] / m["no_cache_fresh"],14:F2} {m["disk_hit"] / m["host_hit"],10:F2}");
        }
        return 0;
    }

    /// <summary>How the measured caches are opened: chunk length, directory (null: a scratch one), encryption at rest, whether hits restore whatever is found.</summary>
    private sealed record CacheSettings(int Chunk, string? CacheDir, bool Encrypt, bool AlwaysRestore);

    private static int RunOne(string folder, int prefix, int suffix, int newTokens, int reps, CacheSettings settings, bool json, out Dictionary<string, double> median)
    {
        var (chunk, cacheDir, encrypt, alwaysRestore) = settings;
        bool ownDir = cacheDir is null;
        cacheDir ??= Path.Combine(Path.GetTempPath(), "ortkv-bench-ttft-" + Guid.NewGuid().ToString("N")[..8]);

        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var prefixTokens = BenchModel.Tokens(prefix, 1, model.VocabSize);
        int[] Prompt(int rep) => [.. prefixTokens, .. BenchModel.Tokens(suffix, 1000 + rep, model.VocabSize)];
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var rows = new Dictionary<string, List<Sample>>();
        try
        {
            Progress($"model {model.Folder} ({model.Layout.ShapeKey}), prompt {prefix}+{suffix} tokens, {newTokens} new, {reps} reps, {chunk}-token chunks");
            WarmUp(model, tokenizer, search, prefix);

            rows["no_cache"] = Repeat(reps, rep => Measure(new TextGenerator(model, tokenizer), Prompt(rep), newTokens, search), "no cache");
            var options = new PrefixCacheOptions
            {
                Directory = cacheDir, ChunkTokens = chunk, DiskCapacityBytes = Math.Max(256L << 20, 4L * prefix * model.Layout.BytesPerToken), EncryptAtRest = encrypt,
                AlwaysRestore = alwaysRestore,
            };
            using (var cache = PrefixCache.Open(model, options)) new TextGenerator(model, tokenizer, cache).Generate(Prompt(-1), 1, search);
            // Host and disk hits alternate, so both rows see the same load on a shared machine.
            var hostHits = new List<Sample>();
            var diskHits = new List<Sample>();
            var freshMisses = new List<Sample>();
            for (int rep = 0; rep < reps; rep++)
            {
                using (var cache = PrefixCache.Open(model, options))
                {
                    new TextGenerator(model, tokenizer, cache).Generate(Prompt(-2 - rep), 1, search); // brings the prefix into host memory
                    hostHits.Add(Measure(new TextGenerator(model, tokenizer, cache), Prompt(rep), newTokens, search));
                }
                Progress($"host hit: rep {rep + 1}/{reps} TTFT {hostHits[^1].TtftMs:F1} ms");
                string[] child = ["ttft", "--child", "disk-hit", "--model", model.Folder, "--cache-dir", cacheDir, "--chunk-tokens", chunk.ToString(CultureInfo.InvariantCulture),
                    "--tokens", string.Join(',', Prompt(rep)), "--new-tokens", newTokens.ToString(CultureInfo.InvariantCulture),
                    "--prefix-tokens", prefix.ToString(CultureInfo.InvariantCulture), .. (encrypt ? ["--encrypt"] : Array.Empty<string>()),
                    .. (alwaysRestore ? ["--always-restore"] : Array.Empty<string>())];
                var fresh = JsonSerializer.Deserialize<Sample[]>(BenchModel.RunSelf(TimeSpan.FromMinutes(10), child))!;
                freshMisses.Add(fresh[0]);
                diskHits.Add(fresh[1]);
                Progress($"fresh process: rep {rep + 1}/{reps} TTFT no cache {fresh[0].TtftMs:F1} ms, disk hit {fresh[1].TtftMs:F1} ms");
            }
            rows["host_hit"] = hostHits;
            rows["no_cache_fresh"] = freshMisses;
            rows["disk_hit"] = diskHits;
            rows["genai"] = Repeat(reps, rep => MeasureGenAi(model.Folder, Prompt(rep), WarmUpPrompt(model), newTokens), "GenAI Generator");
        }
        finally
        {
            if (ownDir) BenchModel.TryDelete(cacheDir);
        }

        median = rows.ToDictionary(r => r.Key, r => BenchModel.Median(r.Value.Select(s => s.TtftMs)));
        if (json) WriteJson(model, prefix, suffix, newTokens, reps, chunk, encrypt, rows, median);
        else WriteTable(rows, median);
        return 0;
    }

    /// <summary>
    /// A fresh process: load, warm up on unrelated prompts, then the request without a cache (what the disk hit is compared
    /// with: the same process, as warm) and the same request against the disk tier with an empty host tier.
    /// </summary>
    private static int RunChild(string role, CommandLine cl)
    {
        if (role != "disk-hit") throw new UsageException($"Unknown bench child role '{role}'.");
        var folder = cl.String("model")!;
        var cacheDir = cl.String("cache-dir")!;
        int chunk = cl.Int("chunk-tokens", PrefixCacheOptions.DefaultChunkTokens, 1);
        var prompt = cl.String("tokens")!.Split(',').Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
        int newTokens = cl.Int("new-tokens", 32, 1);
        int prefix = cl.Int("prefix-tokens", 2048, 1);
        bool encrypt = cl.Flag("encrypt");
        bool alwaysRestore = cl.Flag("always-restore");
        cl.RejectUnknown();
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        WarmUp(model, tokenizer, search, prefix);
        var miss = Measure(new TextGenerator(model, tokenizer), prompt, newTokens, search);
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = cacheDir, ChunkTokens = chunk, EncryptAtRest = encrypt, AlwaysRestore = alwaysRestore });
        var hit = Measure(new TextGenerator(model, tokenizer, cache), prompt, newTokens, search);
        System.Console.WriteLine(JsonSerializer.Serialize(new[] { miss, hit }));
        return 0;
    }

    /// <summary>
    /// What a server has done before its first real request: one unrelated prompt as long as the measured
    /// prefix, computed and stored in a scratch cache on disk, then three 16-token questions after it, each
    /// in a new cache (empty host tier) so each restores from disk. That runs the measured request's code
    /// paths and shapes (ONNX Runtime's first run of a shape costs 3–4× a later one, its second still up to
    /// 1.5×) on real keys and values: after a warm-up on a past of zeros the first real request still
    /// prefilled 10–30 ms slower. The measured prompt's bytes are touched by none of it.
    /// </summary>
    private static void WarmUp(KvModel model, ModelTokenizer tokenizer, SearchOptions search, int pastTokens)
    {
        var prefix = BenchModel.Tokens(pastTokens, 78, model.VocabSize);
        var scratchDir = Path.Combine(Path.GetTempPath(), "ortkv-bench-warmup-" + Guid.NewGuid().ToString("N")[..8]);
        var options = new PrefixCacheOptions
        {
            Directory = scratchDir, ChunkTokens = PrefixCacheOptions.DefaultChunkTokens, DiskCapacityBytes = 2L * pastTokens * model.Layout.BytesPerToken + (16L << 20),
        };
        try
        {
            using (var scratch = PrefixCache.Open(model, options)) new TextGenerator(model, tokenizer, scratch).Generate(prefix, 1, search);
            for (int question = 0; question < 3; question++)
            {
                using var scratch = PrefixCache.Open(model, options);
                new TextGenerator(model, tokenizer, scratch).Generate([.. prefix, .. BenchModel.Tokens(16, 79 + question, model.VocabSize)], 2, search);
            }
        }
        finally
        {
            BenchModel.TryDelete(scratchDir);
        }
    }

    private static int[] WarmUpPrompt(KvModel model) => BenchModel.Tokens(200, 77, model.VocabSize);

    private static Sample Measure(TextGenerator generator, int[] prompt, int newTokens, SearchOptions search)
    {
        var r = generator.Generate(prompt, newTokens, search);
        return new Sample(r.TtftMs, r.Restore.LookupMs, r.Restore.RestoreMs, r.PrefillMs, r.PrefillTokens, r.CachedTokens,
            string.Join(' ', r.Restore.TokensByTier.Select(t => $"{t.Key}:{t.Value}")) + (r.Restore.Estimate is var (hit, miss) ? $" (est. hit {hit:F2} / miss {miss:F2} ms)" : ""), r.Restore.ComputedInstead);
    }

    private static Sample MeasureGenAi(string folder, int[] prompt, int[] warmPrompt, int newTokens)
    {
        using var model = new Microsoft.ML.OnnxRuntimeGenAI.Model(folder);
        using (var warm = new GeneratorParams(model))
        {
            warm.SetSearchOption("max_length", 202);
            using var g = new Generator(model, warm);
            g.AppendTokens(warmPrompt);
            g.GenerateNextToken();
        }
        using var parameters = new GeneratorParams(model);
        parameters.SetSearchOption("max_length", prompt.Length + newTokens);
        parameters.SetSearchOption("do_sample", false);
        var clock = Stopwatch.StartNew();
        using var generator = new Generator(model, parameters);
        generator.AppendTokens(prompt);
        double prefill = clock.Elapsed.TotalMilliseconds;
        generator.GenerateNextToken();
        double ttft = clock.Elapsed.TotalMilliseconds;
        while (!generator.IsDone()) generator.GenerateNextToken();
        return new Sample(ttft, 0, 0, prefill, prompt.Length, 0, "");
    }

    private static List<Sample> Repeat(int reps, Func<int, Sample> measure, string what)
    {
        var samples = new List<Sample>();
        for (int rep = 0; rep < reps; rep++)
        {
            samples.Add(measure(rep));
            Progress($"{what}: rep {rep + 1}/{reps} TTFT {samples[^1].TtftMs:F1} ms");
        }
        return samples;
    }

    private static void WriteTable(Dictionary<string, List<Sample>> rows, Dictionary<string, double> median)
    {
        System.Console.WriteLine($"{"row",-10} {"ttft_ms",9} {"lookup_ms",10} {"restore_ms",11} {"prefill_ms",11} {"prefill_tok",11} {"cached_tok",10}  tiers");
        foreach (var (name, samples) in rows)
            System.Console.WriteLine($"{name,-10} {median[name],9:F1} {BenchModel.Median(samples.Select(s => s.LookupMs)),10:F2} {BenchModel.Median(samples.Select(s => s.RestoreMs)),11:F2} " +
                $"{BenchModel.Median(samples.Select(s => s.PrefillMs)),11:F1} {samples[0].PrefillTokens,11} {samples[0].CachedTokens,10}  {samples[0].Tiers}" +
                (samples.Select(s => s.ComputedInstead).FirstOrDefault(c => c is not null) is { } why ? $"  (computed instead: {why})" : ""));
        System.Console.WriteLine($"no_cache / disk_hit = {median["no_cache"] / median["disk_hit"]:F1}x (target >= 10x); no_cache_fresh / disk_hit = {median["no_cache_fresh"] / median["disk_hit"]:F1}x; disk_hit / host_hit = {median["disk_hit"] / median["host_hit"]:F2}x (target <= 1.25x); " +
            $"genai / disk_hit = {median["genai"] / median["disk_hit"]:F1}x");
    }

    private static void WriteJson(KvModel model, int prefix, int suffix, int newTokens, int reps, int chunk, bool encrypt, Dictionary<string, List<Sample>> rows, Dictionary<string, double> median) =>
        JsonOutput.Write(w =>
        {
            w.WriteBoolean("encrypt_at_rest", encrypt);
            w.WriteString("model", model.Folder);
            w.WriteString("layout", model.Layout.ShapeKey);
            w.WriteNumber("prefix_tokens", prefix);
            w.WriteNumber("suffix_tokens", suffix);
            w.WriteNumber("new_tokens", newTokens);
            w.WriteNumber("reps", reps);
            w.WriteNumber("chunk_tokens", chunk);
            w.WriteStartObject("ttft_ms");
            foreach (var (name, value) in median) w.WriteNumber(name, Math.Round(value, 2));
            w.WriteEndObject();
            w.WriteStartObject("phases_ms");
            foreach (var (name, samples) in rows)
            {
                w.WriteStartObject(name);
                w.WriteNumber("lookup", Math.Round(BenchModel.Median(samples.Select(s => s.LookupMs)), 3));
                w.WriteNumber("restore", Math.Round(BenchModel.Median(samples.Select(s => s.RestoreMs)), 3));
                w.WriteNumber("prefill", Math.Round(BenchModel.Median(samples.Select(s => s.PrefillMs)), 3));
                w.WriteNumber("prefill_tokens", samples[0].PrefillTokens);
                w.WriteNumber("cached_tokens", samples[0].CachedTokens);
                if (samples.Select(s => s.ComputedInstead).FirstOrDefault(c => c is not null) is { } why) w.WriteString("computed_instead", why);
                w.WriteEndObject();
            }
            w.WriteEndObject();
            w.WriteStartObject("ratios");
            w.WriteNumber("no_cache_over_disk_hit", Math.Round(median["no_cache"] / median["disk_hit"], 2));
            w.WriteNumber("disk_hit_over_host_hit", Math.Round(median["disk_hit"] / median["host_hit"], 3));
            w.WriteNumber("genai_over_disk_hit", Math.Round(median["genai"] / median["disk_hit"], 2));
            w.WriteEndObject();
        });

    private static void Progress(string line) => System.Console.Error.WriteLine(line);

}
