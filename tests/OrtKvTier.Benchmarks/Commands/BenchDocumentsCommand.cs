using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Quality;

namespace OrtKvTier.Benchmarks.Commands;

using OrtKvTier.Console;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench documents</c>: document reuse. Quality (default, on the trained model): prompts of a preamble, three
/// short documents in shuffled orders and a question, teacher-forced over the question and its answer; top-1 agreement
/// and mean KL against a full prefill, for each number of recomputed leading tokens and for exact prefix caching.
/// <c>--ttft</c> (bench model): four documents in a different order per request and a question; time to first token with
/// document reuse, with prefix caching alone and with no cache.
/// </summary>
internal static class BenchDocumentsCommand
{
    public const string Usage =
        "  documents [--model DIR] [--trials 36] [--recompute 0,4,16,32] [--json]   (quality of document reuse on ../shared/models/trained-byte-4L)\n" +
        "  documents --ttft [--model tiny|bench|DIR] [--documents 4] [--document-tokens 512] [--question-tokens 32] [--reps 5] [--recompute 16] [--json]";

    private const string Preamble = "Answer the question from the documents below.\n\n";

    public static int Run(CommandLine cl)
    {
        bool ttft = cl.Flag("ttft");
        bool json = cl.Flag("json");
        var model = cl.String("model");
        var recompute = (cl.String("recompute") ?? (ttft ? "16" : "0,4,16,32")).Split(',').Select(k => int.Parse(k, CultureInfo.InvariantCulture)).ToArray();
        if (ttft)
        {
            int documents = cl.Int("documents", 4, 2), documentTokens = cl.Int("document-tokens", 512, 8), questionTokens = cl.Int("question-tokens", 32, 2), reps = cl.Int("reps", 5, 1);
            cl.RejectUnknown();
            return Ttft(BenchModel.ResolveFor(model, 64 + documents * documentTokens + questionTokens + 8), documents, documentTokens, questionTokens, reps, recompute[0], json);
        }
        int trials = cl.Int("trials", 36, 1);
        cl.RejectUnknown();
        return Quality(model ?? BenchModel.TrainedModel(), trials, recompute, json);
    }

    private static int Quality(string folder, int trials, int[] recompute, bool json)
    {
        var (documents, questions) = ReadData();
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(folder);
        if (model.DocumentReuseRefusal is { } why) throw new UsageException($"{folder}: {why}.");
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { AlwaysRestore = true });
        var configs = recompute.Select(k => $"reuse k={k}").Append("prefix cache").ToArray();
        var agreement = configs.ToDictionary(c => c, _ => new PredictionAgreement());
        var random = new Random(7);
        int vocab = model.VocabSize;
        for (int t = 0; t < trials; t++)
        {
            int q = t % questions.Count;
            var chosen = new List<int> { q };
            while (chosen.Count < 3) if (random.Next(documents.Count) is var d && !chosen.Contains(d)) chosen.Add(d);
            var order = chosen.OrderBy(_ => random.Next()).Select(d => tokenizer.Encode($"Document: {documents[d]}\n\n")).ToArray();
            var preamble = tokenizer.Encode(Preamble);
            var qa = tokenizer.Encode($"Question: {questions[q].Question}\nAnswer: {questions[q].Answer}\n");
            int[] all = [.. preamble, .. order.SelectMany(d => d)];
            var next = qa[1..];

            float[] exact;
            using (var full = new KvGenerator(model, search))
            {
                full.AppendTokens(all);
                exact = full.ScoreNext(qa);
            }
            foreach (int k in recompute)
            {
                using var reuse = new KvGenerator(model, search, cache);
                reuse.AppendTokens(preamble);
                foreach (var d in order) reuse.AppendDocument(d, k);
                agreement[$"reuse k={k}"].AddRows(exact, reuse.ScoreNext(qa), next, vocab);
            }
            using (var first = new KvGenerator(model, search, cache))
            {
                first.AppendTokens(all);
                first.CaptureToCache();
            }
            using (var restored = new KvGenerator(model, search, cache))
            {
                restored.AppendTokens(all);
                agreement["prefix cache"].AddRows(exact, restored.ScoreNext(qa), next, vocab);
            }
        }
        // Scored: each token of the question and answer but the first, predicted from what precedes it.
        if (json)
            System.Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "documents-quality", model = folder, trials,
                rows = configs.Select(c => new { config = c, positions = agreement[c].Positions, top1_agreement = agreement[c].Top1Agreement, mean_kl = agreement[c].MeanKl, max_kl = agreement[c].MaxKl }),
            }, new JsonSerializerOptions { WriteIndented = true }));
        else
        {
            System.Console.WriteLine($"{Path.GetFileName(folder)}: {trials} prompts (preamble, 3 of {documents.Count} documents shuffled, a question and its answer), teacher-forced over the question and answer, against a full prefill");
            foreach (var c in configs)
                System.Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{c,-14} positions {agreement[c].Positions,5}  top-1 {agreement[c].Top1Agreement * 100,7:F2}%  mean KL {agreement[c].MeanKl,9:F5}  max KL {agreement[c].MaxKl,7:F3}"));
        }
        return 0;
    }

    private static int Ttft(string folder, int documentCount, int documentTokens, int questionTokens, int reps, int recompute, bool json)
    {
        using var model = KvModel.Load(folder);
        if (model.DocumentReuseRefusal is { } why) throw new UsageException($"{folder}: {why}.");
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var preamble = BenchModel.Tokens(32, 40, model.VocabSize);
        var documents = Enumerable.Range(0, documentCount).Select(d => BenchModel.Tokens(documentTokens, 41 + d, model.VocabSize)).ToArray();
        var random = new Random(3);
        // A different order for every request (none seen before, so prefix caching finds only the preamble).
        var seen = new HashSet<string>();
        var orders = new List<int[]> { Enumerable.Range(0, documentCount).ToArray() };
        seen.Add(string.Join(',', orders[0]));
        for (int tries = 0; orders.Count <= reps && tries < 10_000; tries++)
            if (Enumerable.Range(0, documentCount).OrderBy(_ => random.Next()).ToArray() is var order && seen.Add(string.Join(',', order))) orders.Add(order);
        if (orders.Count <= reps) throw new UsageException($"{documentCount} documents have fewer than {reps + 1} orders; use fewer --reps or more --documents.");
        int[] Question(int r) => BenchModel.Tokens(questionTokens, 100 + r, model.VocabSize);
        using var prefixCache = PrefixCache.Open(model, new PrefixCacheOptions());
        using var reuseCache = PrefixCache.Open(model, new PrefixCacheOptions());
        var rows = new Dictionary<string, List<double>> { ["no_cache"] = [], ["prefix_cache"] = [], ["document_reuse"] = [] };
        var reused = new List<int>();

        double Request(PrefixCache? cache, int r, bool documentsReused)
        {
            var clock = Stopwatch.StartNew();
            using var generator = new KvGenerator(model, search with { MaxLength = model.Layout.MaxLength }, cache);
            if (documentsReused)
            {
                generator.AppendTokens(preamble);
                int cached = 0;
                foreach (int d in orders[r]) cached += generator.AppendDocument(documents[d], recompute).CachedTokens;
                if (r > 0) reused.Add(cached);
                generator.AppendTokens(Question(r));
            }
            else generator.AppendTokens([.. preamble, .. orders[r].SelectMany(d => documents[d]), .. Question(r)]);
            generator.GenerateNextToken();
            double ms = clock.Elapsed.TotalMilliseconds;
            generator.CaptureToCache(); // as a server does, after the first token
            return ms;
        }

        System.Console.Error.WriteLine($"{model.Folder} ({model.Layout.ShapeKey}): {documentCount} documents × {documentTokens} tokens in a new order per request, {questionTokens}-token question, k = {recompute}");
        Request(null, 0, false); // warm-up
        Request(prefixCache, 0, false); // the first request fills both caches
        Request(reuseCache, 0, true);
        for (int r = 1; r <= reps; r++)
        {
            rows["no_cache"].Add(Request(null, r, false));
            rows["prefix_cache"].Add(Request(prefixCache, r, false));
            rows["document_reuse"].Add(Request(reuseCache, r, true));
            System.Console.Error.WriteLine($"rep {r}/{reps}: " + string.Join(", ", rows.Select(p => $"{p.Key} {p.Value[^1]:F0} ms")));
        }
        var median = rows.ToDictionary(p => p.Key, p => BenchModel.Median(p.Value));
        if (json)
            System.Console.WriteLine(JsonSerializer.Serialize(new
            {
                bench = "documents-ttft", model = model.Folder, documents = documentCount, document_tokens = documentTokens, question_tokens = questionTokens, recompute, reps,
                ttft_ms = median.ToDictionary(p => p.Key, p => Math.Round(p.Value, 1)),
                no_cache_over_document_reuse = Math.Round(median["no_cache"] / median["document_reuse"], 2),
                prefix_cache_over_document_reuse = Math.Round(median["prefix_cache"] / median["document_reuse"], 2),
                document_tokens_from_cache = reused.Min(),
            }, new JsonSerializerOptions { WriteIndented = true }));
        else
        {
            foreach (var (name, ms) in median) System.Console.WriteLine($"{name,-15} median TTFT {ms,8:F1} ms");
            System.Console.WriteLine($"no_cache / document_reuse = {median["no_cache"] / median["document_reuse"]:F2}x; prefix_cache / document_reuse = {median["prefix_cache"] / median["document_reuse"]:F2}x; document tokens from the cache per request: {reused.Min()} of {documentCount * documentTokens}");
        }
        return 0;
    }

    private static (List<string> Documents, List<(string Question, string Answer)> Questions) ReadData()
    {
        var documents = new List<string>();
        var questions = new List<(string, string)>();
        foreach (var line in File.ReadAllLines(BenchModel.RepoFile("tests/OrtKvTier.Benchmarks/Data/documents.txt")))
            if (line.StartsWith("D: ", StringComparison.Ordinal)) documents.Add(line[3..]);
            else if (line.StartsWith("Q: ", StringComparison.Ordinal) && line[3..].Split(" | ") is [var q, var a]) questions.Add((q, a));
        return (documents, questions);
    }
}
