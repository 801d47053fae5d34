using System.Globalization;
using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Quality;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers.Remote;

namespace OrtKvTier.Benchmarks.Commands;

using OrtKvTier.Console;

/// <summary>
/// <c>ortkv-bench ttft --encodings exact,int8</c>: time to first token with a disk hit and with a remote hit (Redis on
/// loopback) for each encoding of the lower tiers, in one process, the encodings taking turns every repetition so they
/// see the same load; and the bytes each restore moved. The quality gate is measured and printed but not applied: a
/// random-weight bench model says nothing about quality (<c>ortkv-bench quality</c> does), only about speed and bytes.
/// </summary>
internal static class BenchTtftEncodings
{
    private sealed record Row(string Encoding, string Tier, List<double> Ttft, List<double> Restore, List<long> Bytes, List<int> Cached);

    public static int Run(string folder, int prefix, int suffix, int newTokens, int reps, int chunk, KvEncoding[] encodings, string? remoteText, bool json)
    {
        using var server = remoteText is null ? BenchRemoteCommand.LocalServer.Start() : null;
        var connection = remoteText ?? server!.Endpoint;
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var prefixTokens = BenchModel.Tokens(prefix, 5, model.VocabSize);
        int[] Prompt(int rep) => [.. prefixTokens, .. BenchModel.Tokens(suffix, 3000 + rep, model.VocabSize)];
        var ns = "bench-enc-" + Guid.NewGuid().ToString("N")[..8];
        var root = Path.Combine(Path.GetTempPath(), "ortkv-bench-ttft-" + ns);
        var fleetKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        var ungated = new KvQualityGate { MinTop1Agreement = 0, MaxMeanKl = double.MaxValue };
        RemoteTier Remote(KvEncoding e) => RemoteTier.For(model, chunk, new RemoteTierOptions
        {
            Connection = connection, Namespace = ns, Admission = RemoteAdmission.Always, OperationTimeout = TimeSpan.FromSeconds(2), SecretKey = fleetKey, Encoding = e,
        });
        PrefixCacheOptions Disk(KvEncoding e) => new()
        {
            Directory = Path.Combine(root, e.ToString()), ChunkTokens = chunk, DiskEncoding = e, QualityGate = ungated, SecretKey = fleetKey, AlwaysRestore = true,
            DiskCapacityBytes = 2L * (prefix + suffix) * model.Layout.BytesPerToken + (64L << 20),
        };
        var remoteCaches = new Dictionary<KvEncoding, PrefixCache>();
        var rows = new List<Row>();
        var noCache = new List<double>();
        try
        {
            System.Console.Error.WriteLine($"{model.Folder} ({model.Layout.ShapeKey}), prompt {prefix}+{suffix} tokens, {chunk}-token chunks, {reps} reps, server {connection}");
            new TextGenerator(model, tokenizer).Generate(BenchModel.Tokens(64, 9, model.VocabSize), 1, search); // warm-up
            foreach (var e in encodings)
            {
                using (var fill = PrefixCache.Open(model, Disk(e) with { ExtraTiers = [Remote(e)] }))
                {
                    if (fill.DiskEncodingQuality is { } q)
                        System.Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{e}: quality gate figures on this model: top-1 {q.Top1Agreement * 100:F2}%, mean KL {q.MeanKl:G3} (not applied here)"));
                    new TextGenerator(model, tokenizer, fill).Generate(Prompt(-1), 1, search);
                    fill.Flush();
                }
                var remote = Remote(e);
                remote.Connect();
                remoteCaches[e] = PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = chunk, ExtraTiers = [remote], SecretKey = fleetKey, AlwaysRestore = true, QualityGate = ungated });
                rows.Add(new Row(e.ToString().ToLowerInvariant(), "disk", [], [], [], []));
                rows.Add(new Row(e.ToString().ToLowerInvariant(), "remote", [], [], [], []));
            }
            // Every repetition: no cache, then each encoding's disk hit (a new cache: empty host memory) and remote hit.
            for (int rep = 0; rep < reps; rep++)
            {
                noCache.Add(new TextGenerator(model, tokenizer).Generate(Prompt(rep), newTokens, search).TtftMs);
                foreach (var e in encodings)
                {
                    using (var disk = PrefixCache.Open(model, Disk(e))) Record(rows, e, "disk", new TextGenerator(model, tokenizer, disk).Generate(Prompt(rep), newTokens, search), model, chunk);
                    var remoteCache = remoteCaches[e];
                    remoteCache.Clear();
                    Record(rows, e, "remote", new TextGenerator(model, tokenizer, remoteCache).Generate(Prompt(rep), newTokens, search), model, chunk);
                }
                System.Console.Error.WriteLine($"rep {rep + 1}/{reps}: " + string.Join(", ", rows.Select(r => $"{r.Encoding} {r.Tier} {r.Ttft[^1]:F1} ms")) + $", no cache {noCache[^1]:F1} ms");
            }
        }
        finally
        {
            foreach (var c in remoteCaches.Values) c.Dispose();
            BenchModel.TryDelete(root);
        }
        Print(rows, BenchModel.Median(noCache), model, prefix, suffix, chunk, json);
        return 0;
    }

    private static void Record(List<Row> rows, KvEncoding e, string tier, GenerationResult result, KvModel model, int chunk)
    {
        var row = rows.Single(r => r.Encoding == e.ToString().ToLowerInvariant() && r.Tier == tier);
        int chunks = result.Restore.ChunkTiers.Count(t => t == tier);
        long chunkBytes = KvCodec.For(e, model.Layout.Shape, chunk)?.EncodedBytes ?? model.Layout.BytesPerToken * chunk;
        row.Ttft.Add(result.TtftMs);
        row.Restore.Add(result.Restore.LookupMs + result.Restore.RestoreMs);
        row.Bytes.Add(chunks * chunkBytes);
        row.Cached.Add(result.Restore.TokensByTier.GetValueOrDefault(tier));
    }

    private static void Print(List<Row> rows, double noCache, KvModel model, int prefix, int suffix, int chunk, bool json)
    {
        double Median(Row r) => BenchModel.Median(r.Ttft);
        Row? Find(string e, string tier) => rows.FirstOrDefault(r => r.Encoding == e && r.Tier == tier);
        var ratios = new Dictionary<string, double>();
        foreach (var tier in new[] { "disk", "remote" })
            if (Find("exact", tier) is { } exact)
                foreach (var other in rows.Where(r => r.Tier == tier && r.Encoding != "exact"))
                {
                    ratios[$"{other.Encoding}_over_exact_{tier}_bytes"] = (double)other.Bytes[0] / exact.Bytes[0];
                    ratios[$"{other.Encoding}_over_exact_{tier}_ttft"] = Median(other) / Median(exact);
                }
        if (json)
        {
            System.Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "ttft-encodings", model = model.Folder, layout = model.Layout.ShapeKey, prefix_tokens = prefix, suffix_tokens = suffix, chunk_tokens = chunk,
                no_cache_ttft_ms = Math.Round(noCache, 2),
                rows = rows.Select(r => new
                {
                    encoding = r.Encoding, tier = r.Tier, ttft_ms = Math.Round(Median(r), 2), lookup_and_restore_ms = Math.Round(BenchModel.Median(r.Restore), 2),
                    bytes_moved = r.Bytes[0], cached_tokens = r.Cached[0],
                }),
                ratios = ratios.ToDictionary(p => p.Key, p => Math.Round(p.Value, 3)),
            }, new JsonSerializerOptions { WriteIndented = true }));
            return;
        }
        System.Console.WriteLine($"\n{model.Folder} ({model.Layout.ShapeKey}): median TTFT, {prefix}+{suffix}-token prompt, {chunk}-token chunks; no cache {noCache:F1} ms");
        System.Console.WriteLine($"{"encoding",-8} {"tier",-7} {"ttft_ms",9} {"restore_ms",11} {"bytes_moved",12} {"cached_tok",10}");
        foreach (var r in rows)
            System.Console.WriteLine($"{r.Encoding,-8} {r.Tier,-7} {Median(r),9:F1} {BenchModel.Median(r.Restore),11:F2} {r.Bytes[0],12} {r.Cached[0],10}");
        foreach (var (name, value) in ratios) System.Console.WriteLine($"{name} = {value:F3}");
    }
}
