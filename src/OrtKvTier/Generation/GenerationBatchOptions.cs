namespace OrtKvTier.Generation;

/// <summary>How a <see cref="GenerationBatch"/> shares the model between sequences.</summary>
public sealed record GenerationBatchOptions
{
    /// <summary>Sequences decoding together at most (rows of one session run). Default 16.</summary>
    public int MaxRows { get; init; } = 16;

    /// <summary>
    /// Host memory the batch's KV may take, in bytes: each sequence reserves what its longest length needs
    /// (<see cref="SearchOptions.MaxLength"/> tokens) and waits until that much is free. Default 1 GiB.
    /// </summary>
    public long MaxKvBytes { get; init; } = 1L << 30;

    /// <summary>Prompt tokens run between two decode steps at most: a long prompt is prefilled in pieces this long while the others keep decoding. Default 256.</summary>
    public int MaxPrefillTokensPerStep { get; init; } = 256;

    /// <summary>Throws naming the option out of range.</summary>
    public void Validate()
    {
        if (MaxRows is < 1 or > 1024) throw new ArgumentOutOfRangeException(nameof(MaxRows), MaxRows, "MaxRows must be between 1 and 1024.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxKvBytes, nameof(MaxKvBytes));
        if (MaxPrefillTokensPerStep < 1) throw new ArgumentOutOfRangeException(nameof(MaxPrefillTokensPerStep), MaxPrefillTokensPerStep, "MaxPrefillTokensPerStep must be positive.");
    }
}
