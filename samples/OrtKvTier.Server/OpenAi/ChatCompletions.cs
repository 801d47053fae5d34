using System.Text.Json;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using OrtKvTier.Chat;
using OrtKvTier.Model;

namespace OrtKvTier.Server.OpenAi;

/// <summary><c>POST /v1/chat/completions</c>: OpenAI's chat completions on the library's <see cref="IChatClient"/>, with and without streaming.</summary>
public static class ChatCompletions
{
    public static async Task<IResult> HandleAsync(HttpContext context, IChatClient chat, KvModel model, RequestQueue queue, IOptions<ServerOptions> server)
    {
        var aborted = context.RequestAborted;
        ChatRequest request;
        IDisposable slot;
        try
        {
            string tenant = Admission.Tenant(context);
            using (var body = await RequestBody.ReadAsync(context.Request, server.Value.MaxRequestBodyBytes, aborted))
                request = ChatRequest.Parse(body.RootElement);
            Admission.CheckModel(request.Model, chat);
            // The tenant comes from the API key, never from the body: tenants never hit (or time) each other's cache entries.
            (request.Options.AdditionalProperties ??= [])[KvChatClient.TenantProperty] = tenant;
            slot = await Admission.EnterAsync(queue, server.Value, chat, model, request.Messages, request.Options, "messages", aborted);
        }
        catch (OpenAiErrorException e)
        {
            return e.Error.ToResult(context);
        }
        using (slot)
        {
            if (request.Stream)
            {
                await StreamAsync(context, chat, request, aborted);
                return Results.Empty;
            }
            var response = await chat.GetResponseAsync(request.Messages, request.Options, aborted);
            RequestLog.Record(context, response.Usage);
            return Results.Json(Completion(response, ChatModels.Id(chat)), OmitNulls);
        }
    }

    private static async Task StreamAsync(HttpContext context, IChatClient chat, ChatRequest request, CancellationToken aborted)
    {
        var response = context.Response;
        response.ContentType = "text/event-stream";
        response.Headers.CacheControl = "no-cache";
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string model = ChatModels.Id(chat);
        Task Send(object chunk) => EventStream.WriteAsync(context, "data: " + JsonSerializer.Serialize(chunk) + "\n\n", aborted);
        object Chunk(object delta, string? finish, object? usage = null, bool noChoices = false) => new
        {
            id, @object = "chat.completion.chunk", created, model,
            choices = noChoices ? Array.Empty<object>() : [new { index = 0, delta, finish_reason = finish }],
            usage,
        };
        // The finishing chunk carries the extension only when the request had documents (clients ignore fields they do not know).
        object Finishing(string finish, object? documents) => documents is null ? Chunk(new { }, finish) : new
        {
            id, @object = "chat.completion.chunk", created, model,
            choices = new[] { new { index = 0, delta = new { }, finish_reason = finish } },
            usage = (object?)null,
            ortkv_documents = documents,
        };

        await Send(Chunk(new { role = "assistant", content = "" }, null));
        UsageDetails? usage = null;
        string? finish = null;
        object? documents = null;
        var failure = await StreamFailure.CatchAsync(context, async () =>
        {
            // A client that disconnects cancels `aborted`: the generation stops within a token.
            await foreach (var update in chat.GetStreamingResponseAsync(request.Messages, request.Options, aborted))
            {
                if (update.Text is { Length: > 0 } text)
                {
                    await Send(Chunk(new { content = text }, null));
                    RequestLog.CountStreamed(context);
                }
                if (update.FinishReason is { } reason) finish = FinishReason(reason);
                if (update.Contents.OfType<UsageContent>().FirstOrDefault() is { } content) usage = content.Details;
                documents ??= ChatRequest.Placements(update.AdditionalProperties);
            }
        }, aborted);
        if (failure is not null)
        {
            // After the 200 the status line is sent: the error is the stream's last event.
            await EventStream.WriteAsync(context, failure.ToEvent(), aborted);
            return;
        }
        RequestLog.Record(context, usage);
        await Send(Finishing(finish ?? "stop", documents));
        if (request.IncludeUsage && usage is not null) await Send(Chunk(new { }, null, Usage(usage), noChoices: true));
        await EventStream.WriteAsync(context, "data: [DONE]\n\n", aborted);
    }

    /// <summary>Extensions (<c>ortkv_documents</c>) appear only when they say something.</summary>
    private static readonly JsonSerializerOptions OmitNulls = new(JsonSerializerDefaults.Web) { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull };

    private static object Completion(ChatResponse response, string model) => new
    {
        id = "chatcmpl-" + (response.ResponseId ?? Guid.NewGuid().ToString("N")),
        @object = "chat.completion",
        created = (response.CreatedAt ?? DateTimeOffset.UtcNow).ToUnixTimeSeconds(),
        model,
        choices = new[] { new { index = 0, message = new { role = "assistant", content = response.Text }, finish_reason = FinishReason(response.FinishReason) } },
        usage = Usage(response.Usage),
        // An extension: where the request's ortkv_document messages were placed from the cache.
        ortkv_documents = ChatRequest.Placements(response.AdditionalProperties),
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
