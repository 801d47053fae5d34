namespace OrtKvTier.Tensors;

/// <summary>
/// How a lower tier (disk, remote) stores a chunk's KV. <see cref="Exact"/> keeps the model's own bytes and is the
/// default everywhere; the others are approximate: restored prefixes differ slightly from computed ones, so a model
/// uses them only once its quality gate passed (the cache measures it on the model first).
/// </summary>
public enum KvEncoding
{
    /// <summary>The model's fp16/fp32 bytes, bit for bit.</summary>
    Exact,

    /// <summary>
    /// 8 bits per element: keys per channel over the chunk's tokens, values per token over the head, each group with a
    /// minimum and a scale at the model's element width. About half an fp16 model's bytes (0.55 at 32-token chunks of 64-wide heads), under a third of an fp32 one's.
    /// </summary>
    Int8,

    /// <summary>4 bits per element, grouped as <see cref="Int8"/>. About a quarter of an fp16 model's bytes; small models often lose too much.</summary>
    Int4,
}

/// <summary>Names of <see cref="KvEncoding"/> in options, reports and file names.</summary>
internal static class KvEncodings
{
    /// <summary><c>exact</c>, <c>int8</c>, <c>int4</c>.</summary>
    public static string Name(this KvEncoding encoding) => encoding switch
    {
        KvEncoding.Exact => "exact",
        KvEncoding.Int8 => "int8",
        KvEncoding.Int4 => "int4",
        _ => throw new ArgumentOutOfRangeException(nameof(encoding), encoding, "Expected exact, int8 or int4."),
    };

    /// <summary>Parses <c>exact</c>, <c>int8</c> or <c>int4</c> (also <c>8</c>, <c>4</c>, any letter case).</summary>
    /// <exception cref="ArgumentException">Anything else, saying what is accepted.</exception>
    public static KvEncoding Parse(string text, string what = "encoding") => text.Trim().ToLowerInvariant() switch
    {
        "exact" or "fp" or "none" => KvEncoding.Exact,
        "int8" or "8" or "q8" => KvEncoding.Int8,
        "int4" or "4" or "q4" => KvEncoding.Int4,
        _ => throw new ArgumentException($"The {what} must be exact, int8 or int4; got '{text}'."),
    };
}
