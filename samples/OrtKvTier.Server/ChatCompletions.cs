using System.Text.Json;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using OrtKvTier.Chat;
using OrtKvTier.Model;

namespace OrtKvTier.Server;

/// <summary><c>POST /v1/chat/completions</c>: OpenAI's chat completions on the library's <see cref="IChatClient"/>, with and without streaming.</summary>
public static class ChatCompletions
{
    public static async Task<IResult> HandleAsync(HttpContext context, IChatClient chat, KvModel model, RequestQueue queue, IOptions<ServerOptions> server)
    {
        var aborted = context.RequestAborted;
        if (Tenants.Authenticate(context, server.Value) is not { } tenant)
            return new OpenAiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with a key this server knows.", "invalid_request_error", null, "invalid_api_key").ToResult(context);
        ChatRequest request;
        try
        {
            request = await ChatRequest.ReadAsync(context.Request, aborted);
            CheckFits(request, chat, model);
        }
        catch (OpenAiErrorException e)
        {
            return e.Error.ToResult(context);
        }
        if (request.Model != ModelId(chat))
            return OpenAiError.BadRequest($"The model '{request.Model}' does not exist here; GET /v1/models lists '{ModelId(chat)}'.", "model", "model_not_found").ToResult(context);

        using var slot = await queue.EnterAsync(aborted);
        if (slot is null)
            return new OpenAiError(429, "The server is busy: every generation slot and queue place is taken. Retry after the time in Retry-After.", "requests", null, "rate_limit_exceeded")
                .ToResult(context, server.Value.RetryAfterSeconds);
        // The tenant comes from the API key, never from the body: tenants never hit (or time) each other's cache entries.
        request.Options.AdditionalProperties = new() { [KvChatClient.TenantProperty] = tenant };
        if (!request.Stream)
        {
            var response = await chat.GetResponseAsync(request.Messages, request.Options, aborted);
            return Results.Json(Completion(response, ModelId(chat)));
        }
        await StreamAsync(context, chat, request, aborted);
        return Results.Empty;
    }

    /// <summary>The model id clients name (<c>GET /v1/models</c>).</summary>
    public static string ModelId(IChatClient chat) => chat.GetService<ChatClientMetadata>()?.DefaultModelId ?? "ortkvtier";

    /// <summary>A prompt the model cannot take is a 400 before anything runs (a stream cannot change its status later).</summary>
    private static void CheckFits(ChatRequest request, IChatClient chat, KvModel model)
    {
        if (chat.GetService<KvChatClient>() is not { } client) return;
        int tokens = client.PromptTokens(request.Messages, request.Options).Length;
        if (tokens >= model.Layout.MaxLength)
            throw new OpenAiErrorException(OpenAiError.BadRequest(
                $"This model's maximum context length is {model.Layout.MaxLength} tokens; your messages are {tokens} tokens. Shorten the messages.", "messages", "context_length_exceeded"));
    }

    private static async Task StreamAsync(HttpContext context, IChatClient chat, ChatRequest request, CancellationToken aborted)
    {
        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string model = ModelId(chat);
        async Task Send(object chunk)
        {
            await response.WriteAsync("data: " + JsonSerializer.Serialize(chunk) + "\n\n", aborted);
            await response.Body.FlushAsync(aborted);
        }
        object Chunk(object delta, string? finish, object? usage = null, bool noChoices = false) => new
        {
            id, @object = "chat.completion.chunk", created, model,
            choices = noChoices ? Array.Empty<object>() : [new { index = 0, delta, finish_reason = finish }],
            usage,
        };

        await Send(Chunk(new { role = "assistant", content = "" }, null));
        UsageDetails? usage = null;
        string? finish = null;
        try
        {
            // A client that disconnects cancels `aborted`: the generation stops within a token.
            await foreach (var update in chat.GetStreamingResponseAsync(request.Messages, request.Options, aborted))
            {
                if (update.Text is { Length: > 0 } text) await Send(Chunk(new { content = text }, null));
                if (update.FinishReason is { } reason) finish = FinishReason(reason);
                if (update.Contents.OfType<UsageContent>().FirstOrDefault() is { } content) usage = content.Details;
            }
        }
        catch (ArgumentException e)
        {
            await response.WriteAsync(OpenAiError.BadRequest(e.Message).ToEvent(), aborted);
            return;
        }
        await Send(Chunk(new { }, finish ?? "stop"));
        if (request.IncludeUsage && usage is not null) await Send(Chunk(new { }, null, Usage(usage), noChoices: true));
        await response.WriteAsync("data: [DONE]\n\n", aborted);
    }

    private static object Completion(ChatResponse response, string model) => new
    {
        id = "chatcmpl-" + (response.ResponseId ?? Guid.NewGuid().ToString("N")),
        @object = "chat.completion",
        created = (response.CreatedAt ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds(),
        model,
        choices = new[] { new { index = 0, message = new { role = "assistant", content = response.Text }, finish_reason = FinishReason(response.FinishReason) } },
        usage = Usage(response.Usage),
    };

    private static object? Usage(UsageDetails? usage) => usage is null ? null : new
    {
        prompt_tokens = usage.InputTokenCount ?? 0,
        completion_tokens = usage.OutputTokenCount ?? 0,
        total_tokens = usage.TotalTokenCount ?? 0,
        prompt_tokens_details = new { cached_tokens = usage.CachedInputTokenCount ?? 0 },
    };

    private static string FinishReason(ChatFinishReason? reason) => reason == ChatFinishReason.Length ? "length" : "stop";
}
