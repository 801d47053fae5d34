using System.Globalization;
using System.Text;
using System.Text.Json;
using OrtKvTier.Model;
using OrtKvTier.Quality;
using OrtKvTier.Tensors;

namespace OrtKvTier.Benchmarks.Commands;

using OrtKvTier.Console;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench quality</c>: what each approximate encoding does to a model's predictions, teacher-forced over a text
/// the model was not trained on (this repository's own docs by default): windows of a restored prefix (exact, int8,
/// int4) and the positions after it; top-1 agreement and KL against the exact prefix, and bits per byte of the text.
/// The trained model (<c>../shared/models/trained-byte-4L</c>) is the yardstick; a random-weight model shows why the
/// gate measures each model instead of trusting published figures.
/// </summary>
internal static class BenchQualityCommand
{
    public const string Usage =
        "  quality [--model DIR[,DIR...]] [--text FILE[,FILE...]] [--prefix 512] [--scored 256] [--chunk-tokens 32] [--positions 10000] [--json]\n" +
        "          (teacher-forced: top-1 agreement, mean KL and bits per byte of int8/int4 prefixes against exact ones; default models: ../shared/models/trained-byte-4L and models/tiny-fp16)";

    public static int Run(CommandLine cl)
    {
        var models = cl.String("model")?.Split(',') ?? [BenchModel.TrainedModel(), RepoPaths.FindShipped("tiny-fp16")];
        var texts = cl.String("text")?.Split(',') ?? [BenchModel.RepoFile("docs/ARCHITECTURE.md"), BenchModel.RepoFile("README.md")];
        int prefix = cl.Int("prefix", 512, 1), scored = cl.Int("scored", 256, 1), chunkTokens = cl.Int("chunk-tokens", 32, 1);
        int positions = cl.Int("positions", 10000, 1);
        bool json = cl.Flag("json");
        cl.RejectUnknown();
        string text = string.Join("\n\n", texts.Select(File.ReadAllText));
        KvEncoding[] encodings = [KvEncoding.Int8, KvEncoding.Int4];
        var rows = new List<object>();
        foreach (var folder in models)
        {
            using var model = KvModel.Load(folder);
            using var tokenizer = new ModelTokenizer(folder);
            int window = prefix + scored + 1;
            int windows = Math.Max(1, (positions + scored - 1) / scored);
            var tokens = tokenizer.Encode(text);
            if (tokens.Length < window)
                throw new ArgumentException($"{folder}: the text has {tokens.Length} tokens; a window takes {window}.");
            var used = tokens.AsSpan(0, Math.Min(tokens.Length, windows * window));
            double bytesPerToken = Encoding.UTF8.GetByteCount(tokenizer.Decode(used)) / (double)used.Length;
            var results = EncodingQualityProbe.Measure(model, encodings, used, chunkTokens, prefix, scored);
            string name = Path.GetFileName(Path.TrimEndingDirectorySeparator(folder));
            foreach (var r in results)
            {
                var codec = KvCodec.For(r.Encoding, model.Layout.Shape, chunkTokens)!;
                double bpb(double nats) => nats / Math.Log(2) / bytesPerToken;
                var row = new
                {
                    model = name, layout = model.Layout.Shape.Text, encoding = r.Encoding.Name(), positions = r.Positions,
                    top1_agreement = r.Top1Agreement, mean_kl = r.MeanKl, max_kl = r.MaxKl,
                    exact_bits_per_byte = bpb(r.ExactNatsPerToken), encoded_bits_per_byte = bpb(r.EncodedNatsPerToken),
                    bytes_ratio = (double)codec.EncodedBytes / codec.ExactBytes,
                };
                rows.Add(row);
                if (!json)
                    System.Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                        $"{name,-16} {row.layout,-14} {row.encoding,-5} positions {row.positions,6}  top-1 {row.top1_agreement * 100,7:F3}%  mean KL {row.mean_kl,9:F6}  max KL {row.max_kl,8:F4}  bits/byte {row.exact_bits_per_byte:F4} -> {row.encoded_bits_per_byte:F4}  bytes {row.bytes_ratio:F3}x exact"));
            }
        }
        if (json) System.Console.WriteLine(JsonSerializer.Serialize(new { bench = "quality", prefix, scored, chunk_tokens = chunkTokens, texts, rows }, new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}
