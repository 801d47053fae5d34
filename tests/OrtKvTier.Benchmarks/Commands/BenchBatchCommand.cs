using System.Diagnostics;
using System.Globalization;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench batch</c>: the generation loop without a server. Decode speed of one sequence alone (<see cref="KvGenerator"/>,
/// today's loop) against the same sequence as the only row of a <see cref="GenerationBatch"/> (what a single user of a
/// batching server gets), and the tokens per second of N sequences decoding together; the modes alternate within each
/// repetition, medians reported with their ratios.
/// </summary>
internal static class BenchBatchCommand
{
    public const string Usage =
        "  batch [--model DIR] [--prompt-tokens 256] [--new-tokens 64] [--rows 1,4,8,16] [--idle-rows 0] [--reps 5] [--json]   (decode: alone vs in a batch;\n" +
        "        --idle-rows: rows that appended a prompt first and hold their slots below the decoding ones without decoding)";

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        int promptTokens = cl.Int("prompt-tokens", 256, 1), newTokens = cl.Int("new-tokens", 64, 2), reps = cl.Int("reps", 5, 1), idleRows = cl.Int("idle-rows", 0, 0);
        var rows = (cl.String("rows") ?? "1,4,8,16").Split(',').Select(r => int.Parse(r, CultureInfo.InvariantCulture)).ToArray();
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        using var model = KvModel.Load(folder);
        var prompts = Enumerable.Range(0, rows.Max()).Select(i => Enumerable.Range(0, promptTokens).Select(t => (t * 31 + i * 7 + 5) % model.VocabSize).ToArray()).ToArray();
        var search = SearchOptions.FromConfig(model) with { MaxLength = promptTokens + newTokens, DoSample = false };
        using var batch = new GenerationBatch(model, new GenerationBatchOptions { MaxRows = rows.Max() + idleRows });
        var idle = Enumerable.Range(0, idleRows).Select(i =>
        {
            var generator = batch.Join(search);
            generator.AppendTokens(prompts[0][..8]); // holds a slot, never decodes
            return generator;
        }).ToList();
        var alone = new List<double>();
        var batchedOne = new List<double>();
        var together = rows.ToDictionary(r => r, _ => new List<double>());
        Alone(model, prompts[0], search); // warm-up
        for (int rep = 0; rep < reps; rep++)
        {
            alone.Add(Alone(model, prompts[0], search));
            batchedOne.Add(Together(batch, prompts[..1], search));
            foreach (int r in rows) together[r].Add(Together(batch, prompts[..r], search) * r);
            System.Console.Error.WriteLine($"rep {rep + 1}: alone {alone[^1]:F1}, batch of 1 {batchedOne[^1]:F1}, " +
                string.Join(", ", rows.Select(r => $"{r} rows {together[r][^1]:F1}")) + " tokens/s");
        }
        idle.ForEach(g => g.Dispose());
        double aloneMedian = Median(alone), oneMedian = Median(batchedOne);
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteString("model", Path.GetFileName(Path.TrimEndingDirectorySeparator(folder)));
                w.WriteNumber("prompt_tokens", promptTokens);
                w.WriteNumber("new_tokens", newTokens);
                w.WriteNumber("alone_tokens_per_second", Math.Round(aloneMedian, 2));
                w.WriteNumber("batch_of_one_tokens_per_second", Math.Round(oneMedian, 2));
                w.WriteNumber("batch_of_one_over_alone", Math.Round(oneMedian / aloneMedian, 3));
                w.WriteStartArray("rows");
                foreach (int r in rows)
                {
                    w.WriteStartObject();
                    w.WriteNumber("rows", r);
                    w.WriteNumber("tokens_per_second", Math.Round(Median(together[r]), 2));
                    w.WriteNumber("over_alone", Math.Round(Median(together[r]) / aloneMedian, 2));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            System.Console.WriteLine($"alone {aloneMedian:F1} tokens/s, batch of one {oneMedian:F1} ({oneMedian / aloneMedian:F3}× alone)");
            foreach (int r in rows) System.Console.WriteLine($"{r,3} rows together: {Median(together[r]):F1} tokens/s in all ({Median(together[r]) / aloneMedian:F2}× one alone)");
        }
        return 0;
    }

    /// <summary>Tokens per second of one sequence's decode alone (the prompt's prefill not counted).</summary>
    private static double Alone(KvModel model, int[] prompt, SearchOptions search)
    {
        using var generator = new KvGenerator(model, search);
        generator.AppendTokens(prompt);
        return Decode(generator);
    }

    /// <summary>Tokens per second per sequence, the sequences decoding together in the batch after all their prompts ran.</summary>
    private static double Together(GenerationBatch batch, int[][] prompts, SearchOptions search)
    {
        using var ready = new Barrier(prompts.Length);
        var rates = new double[prompts.Length];
        var threads = prompts.Select((prompt, i) => new Thread(() =>
        {
            using var generator = batch.Join(search);
            generator.AppendTokens(prompt);
            ready.SignalAndWait();
            rates[i] = Decode(generator);
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        return rates.Average();
    }

    private static double Decode(KvGenerator generator)
    {
        var clock = Stopwatch.StartNew();
        int tokens = 0;
        while (!generator.IsDone)
        {
            generator.GenerateNextToken();
            tokens++;
        }
        return tokens / clock.Elapsed.TotalSeconds;
    }

    private static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);
}
