namespace OrtKvTier.Cache;

/// <summary>What one restore found and how long it took.</summary>
public sealed record PrefixRestoreReport
{
    /// <summary>Prompt tokens whose keys and values were restored (at most the prompt length minus one).</summary>
    public required int RestoredTokens { get; init; }
    /// <summary>The tier each restored chunk came from, in order (<c>host</c>, <c>disk</c>, …).</summary>
    public required IReadOnlyList<string> ChunkTiers { get; init; }
    /// <summary>Milliseconds to hash the prompt, find the chain and read its chunks into host memory.</summary>
    public required double LookupMs { get; init; }
    /// <summary>Milliseconds to copy the chunks into the past tensors.</summary>
    public required double RestoreMs { get; init; }

    /// <summary>Restored tokens per tier (the last chunk may be restored in part).</summary>
    public IReadOnlyDictionary<string, int> TokensByTier { get; init; } = new Dictionary<string, int>();

    /// <summary>How each tier in <see cref="TokensByTier"/> stored what it restored (<c>exact</c>, <c>int8</c>, <c>int4</c>).</summary>
    public IReadOnlyDictionary<string, string> EncodingByTier { get; init; } = new Dictionary<string, string>();

    /// <summary>Leading prompt tokens the tiers held: <see cref="RestoredTokens"/>, or more when the cache computed them instead.</summary>
    public int FoundTokens { get; init; }

    /// <summary>
    /// Why the cache computed a prefix it found instead of restoring it (restoring was expected to take longer than
    /// computing, by costs measured on this machine), or null when it restored what it found.
    /// </summary>
    public string? ComputedInstead { get; init; }

    /// <summary>What the decision expected, in milliseconds: restoring what was found then running the rest, and running the prompt without it; null while the costs were not known (it then restores).</summary>
    public (double HitMs, double MissMs)? Estimate { get; init; }

    /// <summary>Nothing restored.</summary>
    public static PrefixRestoreReport None(double lookupMs = 0) => new() { RestoredTokens = 0, ChunkTiers = [], LookupMs = lookupMs, RestoreMs = 0 };
}
