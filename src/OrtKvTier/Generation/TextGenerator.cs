using System.Diagnostics;
using System.Text;
using OrtKvTier.Cache;
using OrtKvTier.Diagnostics;
using OrtKvTier.Model;

namespace OrtKvTier.Generation;

/// <summary>What one <c>TextGenerator.Generate</c> call produced and how long it took.</summary>
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
    /// <summary>Prompt tokens restored from the prefix cache instead of computed.</summary>
    public int CachedTokens => Restore.RestoredTokens;
    /// <summary>What the prefix cache restored: tokens, tier of each chunk, lookup and restore times.</summary>
    public PrefixRestoreReport Restore { get; init; } = PrefixRestoreReport.None();
    /// <summary>Prompt tokens the model ran (the rest were restored).</summary>
    public int PrefillTokens { get; init; }
    /// <summary>Milliseconds spent running those prompt tokens.</summary>
    public double PrefillMs { get; init; }
    /// <summary>New chunks stored in the cache by this call.</summary>
    public int CapturedChunks { get; init; }
    /// <summary>The prompt's documents placed from their own cache entries (<see cref="KvGenerator.AppendDocument"/>), in prompt order; empty without document reuse.</summary>
    public IReadOnlyList<DocumentPlacement> Documents { get; init; } = [];
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
    /// <summary>The text ended with one of the stop sequences (which is left out of the text).</summary>
    StopSequence,
}

/// <summary>
/// Prompt in, streamed text out: <see cref="KvGenerator"/> plus the model's tokenizer. With a
/// <see cref="PrefixCache"/>, the prompt's cached prefix is restored, and the prompt's chunks are
/// captured right after the first token (off the time-to-first-token, in the background while the next
/// tokens are generated) and again at the end. A <c>tenant</c> (chosen by the application) hits only its own
/// entries (<see cref="KvGenerator"/>). With a <paramref name="batch"/>, each call joins it (waiting for a row and KV memory)
/// and decodes together with the other calls in it; the tokens are the same.
/// </summary>
public sealed class TextGenerator(KvModel model, ModelTokenizer tokenizer, PrefixCache? cache = null, string? tenant = null, GenerationBatch? batch = null)
{
    /// <summary>
    /// Generates up to <paramref name="maxNewTokens"/> tokens after <paramref name="prompt"/>,
    /// calling <paramref name="onText"/> with each piece of text as it is decoded.
    /// </summary>
    public GenerationResult Generate(ReadOnlySpan<int> prompt, int maxNewTokens, SearchOptions? search = null,
        Action<string>? onText = null, CancellationToken cancellationToken = default) =>
        Generate(prompt, maxNewTokens, search, onText, stopSequences: null, cancellationToken);

    /// <summary>
    /// Like <see cref="Generate(ReadOnlySpan{int}, int, SearchOptions?, Action{string}?, CancellationToken)"/>, also stopping
    /// when the text ends with one of <paramref name="stopSequences"/> (left out of the text; text that might
    /// begin one is held back from <paramref name="onText"/> until it is clear). Cancellation is checked
    /// before every token: a cancelled call throws <see cref="OperationCanceledException"/> within one step, and
    /// what it captured so far stays valid in the cache.
    /// </summary>
    /// <remarks>
    /// <paramref name="documents"/>: spans of the prompt that are documents its KV may come from wherever they stood
    /// before (<see cref="KvGenerator.AppendDocument"/>: approximate, opt-in). Ignored without a cache or for a model whose
    /// positions cannot be moved (<see cref="KvModel.DocumentReuseRefusal"/>): the prompt then runs exactly.
    /// </remarks>
    public GenerationResult Generate(ReadOnlySpan<int> prompt, int maxNewTokens, SearchOptions? search,
        Action<string>? onText, IReadOnlyList<string>? stopSequences, CancellationToken cancellationToken = default, IReadOnlyList<Range>? documents = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxNewTokens);
        if (batch is not null && batch.Model != model) throw new ArgumentException($"The batch runs {batch.Model.Folder}; this generator runs {model.Folder}.", nameof(batch));
        var clock = Stopwatch.StartNew();
        search ??= SearchOptions.FromConfig(model);
        search = search with { MaxLength = Math.Min(search.MaxLength, prompt.Length + maxNewTokens) };
        using var generator = batch?.Join(search, cache, tenant, cancellationToken) ?? new KvGenerator(model, search, cache, tenant);
        using var stream = tokenizer.CreateStream();
        var text = new StringBuilder();
        var tokens = new List<int>(maxNewTokens);
        double ttft = 0;
        int captured = 0, emitted = 0;
        Task<int>? promptCapture = null;
        bool stopped = false;
        var stops = stopSequences?.Where(s => !string.IsNullOrEmpty(s)).ToArray() ?? [];
        cancellationToken.ThrowIfCancellationRequested();
        var (restore, prefillTokens, prefillMs, placed) = Prefill(generator, prompt, documents);
        while (!generator.IsDone && !stopped)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int token = generator.GenerateNextToken();
            if (tokens.Count == 0)
            {
                ttft = clock.Elapsed.TotalMilliseconds;
                KvCacheMetrics.TimeToFirstToken.Record(ttft);
            }
            tokens.Add(token);
            int before = text.Length;
            text.Append(stream.Decode(token));
            if (StopAt(text, before, stops) is int cut)
            {
                text.Length = cut;
                stopped = true;
            }
            int safe = stopped ? text.Length : text.Length - HeldBack(text, stops);
            if (safe > emitted)
            {
                onText?.Invoke(text.ToString(emitted, safe - emitted));
                emitted = safe;
            }
            // The prompt's chunks are stored while the next tokens are generated (bench capture: the second token comes sooner).
            if (tokens.Count == 1) promptCapture = generator.CaptureToCacheInBackground();
        }
        if (!stopped && text.Length > emitted) onText?.Invoke(text.ToString(emitted, text.Length - emitted));
        // This waits for the prompt's capture first; if that failed, it stores the prompt's chunks itself (or throws).
        captured += generator.CaptureToCache();
        if (promptCapture is { IsCompletedSuccessfully: true }) captured += promptCapture.Result;
        var reason = stopped ? StopReason.StopSequence
            : tokens.Count > 0 && model.EosTokenIds.Contains(tokens[^1]) ? StopReason.EndOfSequence
            : tokens.Count >= maxNewTokens ? StopReason.MaxNewTokens
            : generator.Sequence.Count >= search.MaxLength ? StopReason.MaxLength : StopReason.EndOfSequence;
        return new GenerationResult
        {
            Tokens = tokens.ToArray(), Text = text.ToString(), PromptTokens = prompt.Length,
            TtftMs = ttft, TotalMs = clock.Elapsed.TotalMilliseconds, StopReason = reason,
            Restore = restore, PrefillTokens = prefillTokens, PrefillMs = prefillMs, CapturedChunks = captured, Documents = placed,
        };
    }

    /// <summary>
    /// Appends the prompt: at once, or (documents, where the cache and the model allow) the stretches between documents as
    /// prompt tokens and each document placed from its own entries. The restore report is the first stretch's (the prompt's exact prefix).
    /// </summary>
    private (PrefixRestoreReport Restore, int PrefillTokens, double PrefillMs, List<DocumentPlacement> Documents) Prefill(KvGenerator generator, ReadOnlySpan<int> prompt, IReadOnlyList<Range>? documents)
    {
        var placed = new List<DocumentPlacement>();
        if (documents is not { Count: > 0 } || cache is null || model.DocumentReuseRefusal is not null)
        {
            generator.AppendTokens(prompt);
            return (generator.LastRestore, generator.LastPrefillTokens, generator.LastPrefillMs, placed);
        }
        int promptLength = prompt.Length;
        var spans = documents.Select(d => d.GetOffsetAndLength(promptLength)).Where(d => d.Length > 0).OrderBy(d => d.Offset).ToArray();
        PrefixRestoreReport? restore = null;
        int prefillTokens = 0, at = 0;
        double prefillMs = 0;
        void Stretch(ReadOnlySpan<int> tokens)
        {
            if (tokens.IsEmpty) return;
            generator.AppendTokens(tokens);
            restore ??= generator.LastRestore;
            prefillTokens += generator.LastPrefillTokens;
            prefillMs += generator.LastPrefillMs;
        }
        foreach (var (offset, length) in spans)
        {
            if (offset < at) throw new ArgumentException($"Documents overlap: one starts at token {offset}, inside the one before (which ends at {at}).", nameof(documents));
            Stretch(prompt[at..offset]);
            placed.Add(generator.AppendDocument(prompt.Slice(offset, length)));
            at = offset + length;
        }
        Stretch(prompt[at..]);
        return (restore ?? PrefixRestoreReport.None(), prefillTokens, prefillMs, placed);
    }

    /// <summary>Where the text must be cut if a stop sequence now appears in it (it can end inside the piece just added).</summary>
    private static int? StopAt(StringBuilder text, int previousLength, string[] stops)
    {
        int? cut = null;
        foreach (var stop in stops)
        {
            int from = Math.Max(0, previousLength - stop.Length + 1);
            int at = text.ToString(from, text.Length - from).IndexOf(stop, StringComparison.Ordinal);
            if (at >= 0 && (cut is null || from + at < cut)) cut = from + at;
        }
        return cut;
    }

    /// <summary>Characters at the end of the text that could be the start of a stop sequence.</summary>
    private static int HeldBack(StringBuilder text, string[] stops)
    {
        int held = 0;
        foreach (var stop in stops)
            for (int n = Math.Min(stop.Length - 1, text.Length); n > held; n--)
                if (text.ToString(text.Length - n, n) == stop[..n])
                {
                    held = n;
                    break;
                }
        return held;
    }
}
