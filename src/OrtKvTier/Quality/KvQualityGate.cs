namespace OrtKvTier.Quality;

/// <summary>
/// When an approximate KV encoding is good enough for a model. Before a tier stores a model's KV at an approximate
/// encoding, the cache measures it on a calibration text (teacher-forced: next-token top-1 agreement and mean KL of
/// the encoded prefix against the exact one) and falls back to exact, with one warning naming the figures, when it
/// misses either threshold. The verdict is stored beside the pool, so it runs once per model, encoding and chunk length.
/// </summary>
public sealed record KvQualityGate
{
    /// <summary>
    /// Least share of positions whose most likely next token stays the same. Default 0.99: int8 keeps 99.9% on the trained
    /// test model and int4 99.5%, while int4 on a random-weight model (flat, near-tied logits) keeps 97.6% (README, <c>ortkv-bench quality</c>).
    /// </summary>
    public double MinTop1Agreement { get; init; } = 0.99;

    /// <summary>Largest mean KL divergence (exact ‖ encoded) in nats. Default 0.01: int8 measures about 1e-6 on the trained model, int4 about 1e-4.</summary>
    public double MaxMeanKl { get; init; } = 0.01;

    /// <summary>The application's own text to measure on (prompts it serves); null: a built-in English text.</summary>
    public string? CalibrationText { get; init; }

    /// <summary>Positions scored at most (in windows of a restored prefix and the tokens after it). Default 512.</summary>
    public int Positions { get; init; } = 512;

    /// <summary>Throws when a field is out of range.</summary>
    public void Validate()
    {
        if (!(MinTop1Agreement is >= 0 and <= 1)) throw new ArgumentOutOfRangeException(nameof(MinTop1Agreement), MinTop1Agreement, "Expected a share between 0 and 1.");
        if (!(MaxMeanKl >= 0)) throw new ArgumentOutOfRangeException(nameof(MaxMeanKl), MaxMeanKl, "Expected a KL divergence in nats, 0 or more.");
        if (Positions is < 16 or > 100_000) throw new ArgumentOutOfRangeException(nameof(Positions), Positions, "Expected between 16 and 100000 positions.");
    }

    /// <summary>Whether <paramref name="quality"/> passes.</summary>
    public bool Passes(EncodingQuality quality) => quality.Top1Agreement >= MinTop1Agreement && quality.MeanKl <= MaxMeanKl;
}
