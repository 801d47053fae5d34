using OrtKvTier.Inference;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Quality;

/// <summary>
/// What an approximate encoding does to a model's predictions, teacher-forced: the next-token distributions computed
/// after a prefix restored at that encoding against those after the exact prefix, over <see cref="Positions"/> positions.
/// </summary>
public sealed record EncodingQuality
{
    /// <summary>The encoding measured.</summary>
    public required KvEncoding Encoding { get; init; }
    /// <summary>Positions scored.</summary>
    public required int Positions { get; init; }
    /// <summary>Share of positions whose most likely next token is the same as with the exact prefix.</summary>
    public required double Top1Agreement { get; init; }
    /// <summary>Mean KL divergence, exact ‖ encoded, in nats.</summary>
    public required double MeanKl { get; init; }
    /// <summary>Largest KL divergence at one position, in nats.</summary>
    public required double MaxKl { get; init; }
    /// <summary>Cross-entropy of the text's next tokens with the exact prefix, nats per token.</summary>
    public required double ExactNatsPerToken { get; init; }
    /// <summary>Cross-entropy of the text's next tokens with the encoded prefix, nats per token.</summary>
    public required double EncodedNatsPerToken { get; init; }
}

/// <summary>
/// Measures <see cref="EncodingQuality"/>: the text is cut into windows of a prefix (whole chunks) and the positions
/// after it; the prefix is computed once, then restored exactly and at each encoding (encoded and decoded chunk by chunk
/// into the past, as a restore does), and the positions after it are run on each restored past.
/// </summary>
internal static unsafe class EncodingQualityProbe
{
    /// <summary>
    /// Scores every encoding in <paramref name="encodings"/> on windows of <paramref name="tokens"/>: <paramref name="prefixTokens"/>
    /// (a multiple of <paramref name="chunkTokens"/>) restored, then <paramref name="scoredTokens"/> positions scored, as many
    /// windows as the text holds (at least one).
    /// </summary>
    public static EncodingQuality[] Measure(KvModel model, IReadOnlyList<KvEncoding> encodings, ReadOnlySpan<int> tokens, int chunkTokens, int prefixTokens, int scoredTokens)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (prefixTokens < chunkTokens || prefixTokens % chunkTokens != 0)
            throw new ArgumentException($"The restored prefix must be a positive multiple of the chunk ({chunkTokens} tokens); got {prefixTokens}.", nameof(prefixTokens));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(scoredTokens);
        int window = prefixTokens + scoredTokens + 1;
        if (window > model.Layout.MaxLength)
            throw new ArgumentException($"A window of {prefixTokens} + {scoredTokens} + 1 tokens exceeds the model's context of {model.Layout.MaxLength}.");
        if (tokens.Length < window)
            throw new ArgumentException($"The text has {tokens.Length} tokens; one window of {prefixTokens} restored and {scoredTokens} scored needs {window}. Give a longer text or smaller windows.");
        var layout = new ChunkLayout(model.Layout, chunkTokens);
        var codecs = encodings.Select(e => KvCodec.For(e, model.Layout.Shape, chunkTokens)).ToArray();
        var totals = encodings.Select(_ => new PredictionAgreement()).ToArray();
        int chunks = prefixTokens / chunkTokens, vocab = model.VocabSize;
        var exactChunks = new byte[chunks * layout.ChunkBytes];
        var encoded = codecs.Select(c => new byte[c?.EncodedBytes ?? 0]).ToArray();
        var exactRows = new float[scoredTokens * vocab];
        var row = new float[vocab];
        using var step = new ModelStep(model);
        using var past = PastKeyValues.Create(model.Layout, KvMemory.For(model));
        for (int start = 0; start + window <= tokens.Length; start += window)
        {
            var prefix = tokens.Slice(start, prefixTokens);
            var scored = tokens.Slice(start + prefixTokens, scoredTokens);
            var next = tokens.Slice(start + prefixTokens + 1, scoredTokens);
            past.Truncate(0);
            step.Run(past, prefix).Dispose();
            fixed (byte* keep = exactChunks)
            {
                var pointers = layout.Pointers(past);
                for (int c = 0; c < chunks; c++) layout.CopyFromPast(pointers, past.Capacity, c, keep + c * layout.ChunkBytes);
            }
            using (var logits = step.Run(past, scored))
                for (int i = 0; i < scoredTokens; i++) step.CopyRow(logits, i, exactRows.AsSpan(i * vocab, vocab));
            for (int e = 0; e < codecs.Length; e++)
            {
                past.PrepareRestore(prefixTokens);
                var pointers = layout.Pointers(past);
                for (int c = 0; c < chunks; c++)
                {
                    var exact = exactChunks.AsSpan((int)(c * layout.ChunkBytes), (int)layout.ChunkBytes);
                    var scatter = layout.ScatterToPast(pointers, past.Capacity, c, chunkTokens);
                    // A chunk an encoding cannot store (non-finite values) is not stored: it is computed, exactly.
                    if (codecs[e] is { } codec && codec.Encode(exact, encoded[e]))
                    {
                        codec.Decode(encoded[e], scatter);
                        continue;
                    }
                    fixed (byte* source = exact) scatter.Place(source, 0, exact.Length);
                }
                using var logits = step.Run(past, scored);
                for (int i = 0; i < scoredTokens; i++)
                {
                    step.CopyRow(logits, i, row);
                    totals[e].Add(exactRows.AsSpan(i * vocab, vocab), row, next[i]);
                }
            }
        }
        return [.. totals.Select((t, e) => t.Result(encodings[e]))];
    }
}
