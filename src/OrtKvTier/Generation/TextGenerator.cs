using System.Diagnostics;
using System.Text;
using OrtKvTier.Model;

namespace OrtKvTier.Generation;

/// <summary>What one <see cref="TextGenerator.Generate"/> call produced and how long it took.</summary>
public sealed record GenerationResult
{
    /// <summary>Generated token ids (prompt excluded).</summary>
    public required int[] Tokens { get; init; }
    /// <summary>Generated text.</summary>
    public required string Text { get; init; }
    /// <summary>Prompt length in tokens.</summary>
    public required int PromptTokens { get; init; }
    /// <summary>Milliseconds from the call to the first generated token.</summary>
    public required double TtftMs { get; init; }
    /// <summary>Milliseconds for the whole call.</summary>
    public required double TotalMs { get; init; }
    /// <summary>Why generation stopped.</summary>
    public required StopReason StopReason { get; init; }
}

/// <summary>Why generation stopped.</summary>
public enum StopReason
{
    /// <summary>An end-of-sequence token was generated.</summary>
    EndOfSequence,
    /// <summary>The requested number of new tokens was generated.</summary>
    MaxNewTokens,
    /// <summary>The sequence reached <see cref="SearchOptions.MaxLength"/>.</summary>
    MaxLength,
}

/// <summary>Prompt in, streamed text out: <see cref="KvGenerator"/> plus the model's tokenizer.</summary>
public sealed class TextGenerator(KvModel model, ModelTokenizer tokenizer)
{
    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/>,
    /// calling <paramref name="onText"/> with each piece of text as it is decoded.
    /// </summary>
    public GenerationResult Generate(ReadOnlySpan<int> prompt, int maxNewTokens, SearchOptions? search = null,
        Action<string>? onText = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        var clock = Stopwatch.StartNew();
        search ??= SearchOptions.FromConfig(model);
        search = search with { MaxLength = Math.Min(search.MaxLength, prompt.Length + maxNewTokens) };
        using var generator = new KvGenerator(model, search);
        using var stream = tokenizer.CreateStream();
        var text = new StringBuilder();
        var tokens = new List<int>(maxNewTokens);
        double ttft = 0;
        generator.AppendTokens(prompt);
        while (!generator.IsDone)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int token = generator.GenerateNextToken();
            if (tokens.Count == 0) ttft = clock.Elapsed.TotalMilliseconds;
            tokens.Add(token);
            var piece = stream.Decode(token);
            text.Append(piece);
            if (piece.Length > 0) onText?.Invoke(piece);
        }
        var reason = tokens.Count >= maxNewTokens ? StopReason.MaxNewTokens
            : generator.Sequence.Count >= search.MaxLength ? StopReason.MaxLength : StopReason.EndOfSequence;
        if (tokens.Count > 0 && model.EosTokenIds.Contains(tokens[^1])) reason = StopReason.EndOfSequence;
        return new GenerationResult
        {
            Tokens = tokens.ToArray(), Text = text.ToString(), PromptTokens = prompt.Length,
            TtftMs = ttft, TotalMs = clock.Elapsed.TotalMilliseconds, StopReason = reason,
        };
    }
}
