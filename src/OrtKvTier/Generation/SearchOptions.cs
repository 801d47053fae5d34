using OrtKvTier.Model;

namespace OrtKvTier.Generation;

/// <summary>
/// How the next token is chosen and when generation stops. Start from <see cref="FromConfig"/>
/// (the model's <c>search</c> section) and override with <c>with { ... }</c>.
/// </summary>
public sealed record SearchOptions
{
    /// <summary>Longest sequence, prompt included; at most the model's max length.</summary>
    public required int MaxLength { get; init; }
    /// <summary>Sample from the distribution; false picks the most likely token (first on ties).</summary>
    public bool DoSample { get; init; }
    /// <summary>Softmax temperature when sampling; positive. Default 1.</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Keep only the k most likely tokens when sampling; 0 keeps all. Default 0.</summary>
    public int TopK { get; init; }
    /// <summary>Keep the smallest set of tokens whose probability reaches p when sampling; in (0, 1]. Default 1.</summary>
    public double TopP { get; init; } = 1.0;
    /// <summary>Seed for sampling; the same seed, options and prompt give the same tokens. Null picks one at random.</summary>
    public ulong? Seed { get; init; }
    /// <summary>
    /// Scores of tokens already in the sequence (prompt included) are divided by this when positive and multiplied
    /// when negative, before greedy choice or sampling, as GenAI does; 1 turns it off. Default 1.
    /// </summary>
    public double RepetitionPenalty { get; init; } = 1.0;
    /// <summary>End-of-sequence tokens cannot be chosen while the sequence (prompt included) is shorter than this. Default 0.</summary>
    public int MinLength { get; init; }
    /// <summary>
    /// OpenAI's presence penalty, in [-2, 2]: subtracted from the score of every token generated at least once so far
    /// (the prompt does not count), before greedy choice or sampling. Default 0 (off).
    /// </summary>
    public double PresencePenalty { get; init; }
    /// <summary>OpenAI's frequency penalty, in [-2, 2]: times the number of times a token was generated so far, subtracted from its score. Default 0 (off).</summary>
    public double FrequencyPenalty { get; init; }
    /// <summary>OpenAI's logit bias: token id → a value in [-100, 100] added to that token's score at every step. Default none.</summary>
    public IReadOnlyDictionary<int, double>? LogitBias { get; init; }

    internal bool AdjustsScores => RepetitionPenalty != 1.0 || PresencePenalty != 0 || FrequencyPenalty != 0 || LogitBias is { Count: > 0 };

    /// <summary>The defaults from the model's genai_config.json <c>search</c> section.</summary>
    public static SearchOptions FromConfig(KvModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        var search = model.Config.Search;
        return new SearchOptions
        {
            MaxLength = Math.Min(search?.MaxLength ?? model.Layout.MaxLength, model.Layout.MaxLength),
            DoSample = search?.DoSample ?? false,
            Temperature = search?.Temperature ?? 1.0,
            TopK = search?.TopK ?? 0,
            TopP = search?.TopP ?? 1.0,
            RepetitionPenalty = search?.RepetitionPenalty ?? 1.0,
            MinLength = search?.MinLength ?? 0,
            Seed = search?.RandomSeed is >= 0 and var seed ? (ulong)seed : null,
        };
    }

    /// <summary>Throws when a value is out of range for <paramref name="model"/>.</summary>
    public void Validate(KvModel model)
    {
        ArgumentNullException.ThrowIfNull(model);
        if (MaxLength < 1 || MaxLength > model.Layout.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(MaxLength), MaxLength, $"MaxLength must be between 1 and the model's max length {model.Layout.MaxLength}.");
        if (!(Temperature > 0) || double.IsInfinity(Temperature))
            throw new ArgumentOutOfRangeException(nameof(Temperature), Temperature, "Temperature must be a positive finite number.");
        if (TopK < 0)
            throw new ArgumentOutOfRangeException(nameof(TopK), TopK, "TopK must be 0 (off) or positive.");
        if (!(TopP > 0 && TopP <= 1))
            throw new ArgumentOutOfRangeException(nameof(TopP), TopP, "TopP must be in (0, 1]; 1 turns it off.");
        if (!(RepetitionPenalty > 0) || double.IsInfinity(RepetitionPenalty))
            throw new ArgumentOutOfRangeException(nameof(RepetitionPenalty), RepetitionPenalty, "RepetitionPenalty must be a positive finite number; 1 turns it off.");
        if (MinLength < 0)
            throw new ArgumentOutOfRangeException(nameof(MinLength), MinLength, "MinLength must be 0 (off) or positive.");
        if (!(PresencePenalty is >= -2 and <= 2))
            throw new ArgumentOutOfRangeException(nameof(PresencePenalty), PresencePenalty, "PresencePenalty must be between -2 and 2; 0 turns it off.");
        if (!(FrequencyPenalty is >= -2 and <= 2))
            throw new ArgumentOutOfRangeException(nameof(FrequencyPenalty), FrequencyPenalty, "FrequencyPenalty must be between -2 and 2; 0 turns it off.");
        foreach (var (token, bias) in LogitBias ?? new Dictionary<int, double>())
        {
            if ((uint)token >= (uint)model.VocabSize)
                throw new ArgumentOutOfRangeException(nameof(LogitBias), token, $"LogitBias names token {token}; this model's token ids are 0 to {model.VocabSize - 1}.");
            if (!(bias is >= -100 and <= 100))
                throw new ArgumentOutOfRangeException(nameof(LogitBias), bias, $"LogitBias of token {token} is {bias}; a bias must be between -100 and 100.");
        }
    }
}
