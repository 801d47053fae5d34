using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.AI;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Chat;

/// <summary>How <see cref="KvChatClient"/> answers when <see cref="ChatOptions"/> leave something open.</summary>
public sealed record KvChatClientOptions
{
    /// <summary>Most tokens generated when <see cref="ChatOptions.MaxOutputTokens"/> is not set. Default 256.</summary>
    public int DefaultMaxOutputTokens { get; init; } = 256;

    /// <summary>The model id reported in metadata and responses. Default: the model folder's name.</summary>
    public string? ModelId { get; init; }

    /// <summary>The tenant of requests whose options name none (<see cref="KvChatClient.TenantProperty"/>). Default none.</summary>
    public string? Tenant { get; init; }

    /// <summary>
    /// A batch over the client's model that its requests join (their decode steps run together; each answer is the one it
    /// gets alone); the caller owns it. Default none: each request runs its own generation loop.
    /// </summary>
    public GenerationBatch? Batch { get; init; }
}

/// <summary>
/// <see cref="IChatClient"/> over a <see cref="KvModel"/>, its chat template and a shared
/// <see cref="PrefixCache"/>: every request restores the longest prefix any earlier request (any
/// conversation, an earlier process, another process sharing the cache directory) computed, and
/// stores its own. Usage reports input, output and cached input tokens. Any number of concurrent
/// requests may share one client; each runs its own generation loop.
/// </summary>
public sealed class KvChatClient : IChatClient
{
    private readonly KvModel _model;
    private readonly ModelTokenizer _tokenizer;
    private readonly PrefixCache? _cache;
    private readonly KvChatClientOptions _options;
    private readonly ChatClientMetadata _metadata;

    /// <summary>
    /// The <see cref="ChatOptions.AdditionalProperties"/> entry (a string) naming a request's tenant: a server sets it
    /// from what authenticated the caller (an API key), never from the request body. Tenants never hit each other's
    /// cache entries, so none can tell by timing whether another's prompt is cached.
    /// </summary>
    public const string TenantProperty = "ortkv.tenant";

    /// <summary>
    /// The <see cref="ChatMessage.AdditionalProperties"/> entry (<c>true</c>) marking a message as a document: its KV may come
    /// from the cache wherever the document stood in earlier prompts, moved to its place here (approximate; see
    /// <see cref="KvGenerator.AppendDocument"/>). Opt-in: without it every answer is computed exactly.
    /// </summary>
    public const string DocumentProperty = "ortkv.document";

    /// <summary>The <see cref="ChatOptions.AdditionalProperties"/> entry (an <c>IReadOnlyDictionary&lt;int, double&gt;</c>) holding OpenAI's logit bias: token id → bias in [-100, 100].</summary>
    public const string LogitBiasProperty = "ortkv.logit_bias";

    /// <summary>A client over <paramref name="model"/> and its <paramref name="tokenizer"/>; <paramref name="cache"/> null answers without prefix reuse.</summary>
    public KvChatClient(KvModel model, ModelTokenizer tokenizer, PrefixCache? cache = null, KvChatClientOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        _model = model;
        _tokenizer = tokenizer;
        _cache = cache;
        _options = options ?? new KvChatClientOptions();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(_options.DefaultMaxOutputTokens);
        if (_options.Batch is { } batch && batch.Model != model)
            throw new ArgumentException($"The batch runs {batch.Model.Folder}; this client answers with {model.Folder}.", nameof(options));
        _metadata = new ChatClientMetadata("OrtKvTier", new Uri("file://" + model.Folder), _options.ModelId ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(model.Folder)));
    }

    /// <summary>The prompt tokens the chat template makes of <paramref name="messages"/> (ending with the assistant prompt).</summary>
    public int[] PromptTokens(IEnumerable<ChatMessage> messages, ChatOptions? options = null) => _tokenizer.Encode(RenderPrompt(messages, options));

    /// <summary>The prompt text the model's chat template makes of <paramref name="messages"/> (and <see cref="ChatOptions.Instructions"/>), ending with the assistant prompt.</summary>
    public string RenderPrompt(IEnumerable<ChatMessage> messages, ChatOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        return _tokenizer.ApplyChatTemplate(MessagesJson(messages, options));
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming what in <paramref name="options"/> this model cannot serve (a sampling value out of range, a logit bias for a token it does not have).</summary>
    public void CheckOptions(ChatOptions? options) => SearchFor(options);

    /// <inheritdoc />
    public Task<ChatResponse> GetResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null, CancellationToken cancellationToken = default)
    {
        var (prompt, documents) = PromptAndDocuments(messages, options);
        return OnOwnThread(() =>
        {
            var result = Generate(prompt, options, onText: null, cancellationToken, documents);
            var response = new ChatResponse(new ChatMessage(ChatRole.Assistant, result.Text))
            {
                ModelId = _metadata.DefaultModelId, FinishReason = FinishReason(result.StopReason), Usage = Usage(result),
                CreatedAt = DateTimeOffset.UtcNow, ResponseId = Guid.NewGuid().ToString("N"),
                AdditionalProperties = Details(result),
            };
            return response;
        }, cancellationToken);
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<ChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var (prompt, documents) = PromptAndDocuments(messages, options);
        // A small buffer: generation runs at most a couple of pieces ahead of the reader, so a reader that
        // cancels or stops reading stops it within a token.
        var pieces = Channel.CreateBounded<string>(new BoundedChannelOptions(1) { SingleReader = true, SingleWriter = true, FullMode = BoundedChannelFullMode.Wait });
        var responseId = Guid.NewGuid().ToString("N");
        // Stops the generation when the caller stops reading, not only when it cancels.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // No token for Task.Run: cancelled before it starts (a client that left at once, a busy pool), the delegate would
        // never run, the channel never complete, and the reader below would wait forever. The generation checks `stop` itself.
        var run = OnOwnThread(() =>
        {
            try
            {
                return Generate(prompt, options, piece => pieces.Writer.WriteAsync(piece, stop.Token).AsTask().GetAwaiter().GetResult(), stop.Token, documents);
            }
            finally
            {
                pieces.Writer.TryComplete();
            }
        });

        GenerationResult result;
        try
        {
            await foreach (var piece in pieces.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
                yield return new ChatResponseUpdate(ChatRole.Assistant, piece) { ResponseId = responseId, ModelId = _metadata.DefaultModelId };
            result = await run.ConfigureAwait(false);
        }
        finally
        {
            if (!run.IsCompleted)
            {
                await stop.CancelAsync().ConfigureAwait(false);
                try { await run.ConfigureAwait(false); } catch (OperationCanceledException) { }
            }
        }
        yield return new ChatResponseUpdate
        {
            Role = ChatRole.Assistant, ResponseId = responseId, ModelId = _metadata.DefaultModelId, FinishReason = FinishReason(result.StopReason),
            Contents = [new UsageContent(Usage(result))], AdditionalProperties = Details(result),
        };
    }

    /// <summary>
    /// Runs a generation on a thread of its own: it blocks for its whole length (on the model, or on a batch's steps), and
    /// many at once on pool threads would starve the pool that serves the requests.
    /// </summary>
    private static Task<T> OnOwnThread<T>(Func<T> generation, CancellationToken cancellationToken = default) =>
        Task.Factory.StartNew(generation, cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <inheritdoc />
    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType == typeof(KvModel)) return _model;
        if (serviceType == typeof(PrefixCache)) return _cache;
        if (serviceType == typeof(GenerationBatch)) return _options.Batch;
        return serviceType.IsInstanceOfType(this) ? this : null;
    }

    /// <summary>Nothing to release: the model, tokenizer and cache belong to the caller.</summary>
    public void Dispose() { }

    private GenerationResult Generate(int[] prompt, ChatOptions? options, Action<string>? onText, CancellationToken cancellationToken, IReadOnlyList<Range>? documents = null)
    {
        var search = SearchFor(options);
        int maxNew = options?.MaxOutputTokens ?? _options.DefaultMaxOutputTokens;
        if (maxNew <= 0) throw new ArgumentOutOfRangeException(nameof(options), maxNew, "ChatOptions.MaxOutputTokens must be positive.");
        // In a batch, an answer ends ("length") where the batch's KV memory would: it never waits for more than the batch holds.
        int room = Math.Min(search.MaxLength, _options.Batch?.MaxKvTokens ?? int.MaxValue) - prompt.Length;
        if (room <= 0)
            throw new ArgumentException($"The conversation is {prompt.Length} tokens; the model takes at most {search.MaxLength}. Shorten the history.", nameof(options));
        var tenant = options?.AdditionalProperties?.TryGetValue(TenantProperty, out var value) == true ? value as string ?? value?.ToString() : _options.Tenant;
        return new TextGenerator(_model, _tokenizer, _cache, tenant, _options.Batch).Generate(prompt, Math.Min(maxNew, room), search, onText, options?.StopSequences?.ToArray(), cancellationToken, documents);
    }

    /// <summary>The prompt's tokens and where its document messages sit in it.</summary>
    private (int[] Prompt, List<Range> Documents) PromptAndDocuments(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        var list = messages.ToList();
        var prompt = PromptTokens(list, options);
        return (prompt, DocumentSpans(list, prompt));
    }

    /// <summary>
    /// Where the messages marked <see cref="DocumentProperty"/> sit in <paramref name="prompt"/>: each document's tokens (or,
    /// where the template's text around it merges with its first or last token, all but those) found after the previous one.
    /// </summary>
    private List<Range> DocumentSpans(IEnumerable<ChatMessage> messages, int[] prompt)
    {
        var spans = new List<Range>();
        int from = 0;
        foreach (var message in messages)
        {
            if (message.AdditionalProperties?.TryGetValue(DocumentProperty, out var flag) != true || flag is not true || string.IsNullOrEmpty(message.Text)) continue;
            var tokens = _tokenizer.Encode(message.Text);
            foreach (var candidate in new[] { tokens, tokens.Length > 2 ? tokens[1..^1] : [] })
            {
                int at = candidate.Length == 0 ? -1 : prompt.AsSpan(from).IndexOf(candidate);
                if (at < 0) continue;
                spans.Add(new Range(from + at, from + at + candidate.Length));
                from += at + candidate.Length;
                break;
            }
        }
        return spans;
    }

    private SearchOptions SearchFor(ChatOptions? options)
    {
        var search = SearchOptions.FromConfig(_model);
        if (options is null) return search;
        search = search with
        {
            // Temperature 0 or top-p 0 is greedy (as OpenAI reads them); a positive temperature, top-p or top-k asks for
            // sampling; otherwise the config decides.
            DoSample = options.Temperature is not 0 && options.TopP is not 0 && (options.Temperature is > 0 || options.TopP is not null || options.TopK is not null || search.DoSample),
            Temperature = options.Temperature is > 0 ? options.Temperature.Value : search.Temperature,
            TopP = options.TopP is > 0 ? options.TopP.Value : search.TopP,
            PresencePenalty = options.PresencePenalty ?? 0,
            FrequencyPenalty = options.FrequencyPenalty ?? 0,
            LogitBias = options.AdditionalProperties?.TryGetValue(LogitBiasProperty, out var bias) == true ? bias as IReadOnlyDictionary<int, double> : null,
            TopK = options.TopK ?? search.TopK,
            Seed = options.Seed is long seed ? unchecked((ulong)seed) : search.Seed,
        };
        search.Validate(_model);
        return search;
    }

    private static string MessagesJson(IEnumerable<ChatMessage> messages, ChatOptions? options)
    {
        using var buffer = new MemoryStream();
        using (var w = new Utf8JsonWriter(buffer))
        {
            w.WriteStartArray();
            if (!string.IsNullOrEmpty(options?.Instructions)) Message(w, "system", options.Instructions);
            foreach (var message in messages)
            {
                ArgumentNullException.ThrowIfNull(message, nameof(messages));
                Message(w, message.Role.Value, message.Text);
            }
            w.WriteEndArray();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());

        static void Message(Utf8JsonWriter w, string role, string content)
        {
            w.WriteStartObject();
            w.WriteString("role", role);
            w.WriteString("content", content);
            w.WriteEndObject();
        }
    }

    private static UsageDetails Usage(GenerationResult result) => new()
    {
        InputTokenCount = result.PromptTokens, OutputTokenCount = result.Tokens.Length, TotalTokenCount = result.PromptTokens + result.Tokens.Length,
        CachedInputTokenCount = result.CachedTokens,
    };

    private static AdditionalPropertiesDictionary Details(GenerationResult result) => new()
    {
        ["ttft_ms"] = result.TtftMs,
        ["cached_tokens"] = result.CachedTokens,
        ["tokens_by_tier"] = result.Restore.TokensByTier,
        ["prefill_ms"] = result.PrefillMs,
        ["found_tokens"] = result.Restore.FoundTokens,
        ["computed_instead"] = result.Restore.ComputedInstead,
        ["documents"] = result.Documents,
    };

    private static ChatFinishReason FinishReason(StopReason reason) => reason switch
    {
        StopReason.MaxNewTokens or StopReason.MaxLength => ChatFinishReason.Length,
        _ => ChatFinishReason.Stop,
    };
}

/// <summary>Extensions that make chat clients.</summary>
public static class KvChatClientExtensions
{
    /// <summary>An <see cref="IChatClient"/> over this model, its tokenizer and (optionally) a shared prefix cache.</summary>
    public static KvChatClient AsChatClient(this KvModel model, ModelTokenizer tokenizer, PrefixCache? cache = null, KvChatClientOptions? options = null) =>
        new(model, tokenizer, cache, options);
}
