using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using OrtKvTier.Chat;
using OrtKvTier.Model;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// <c>POST /v1/responses</c> (OpenAI's Responses API for text: a response object, or its stream of events) and
/// <c>GET /v1/responses/{id}</c>, on the library's <see cref="IChatClient"/>. <c>previous_response_id</c> continues a
/// stored conversation.
/// </summary>
public static class Responses
{
    public static async Task<IResult> HandleAsync(HttpContext context, IChatClient chat, KvModel model, RequestQueue queue, ResponseStore store, IOptions<ServerOptions> server)
    {
        var aborted = context.RequestAborted;
        ResponsesRequest request;
        List<ChatMessage> conversation;
        string tenant;
        IDisposable slot;
        try
        {
            tenant = Admission.Tenant(context);
            using (var body = await RequestBody.ReadAsync(context.Request, server.Value.MaxRequestBodyBytes, aborted))
                request = ResponsesRequest.Parse(body.RootElement);
            Admission.CheckModel(request.Model, chat);
            conversation = [];
            if (request.PreviousResponseId is { } previous)
                conversation.AddRange((store.Find(tenant, previous) ?? throw new OpenAiErrorException(new OpenAiError(404,
                    $"Previous response with id '{previous}' not found: it was never stored (store: false), belongs to another API key, or was dropped (this server keeps the last Server:StoredResponses).",
                    "invalid_request_error", "previous_response_id", "previous_response_not_found"))).Conversation);
            conversation.AddRange(request.Input);
            (request.Options.AdditionalProperties ??= [])[KvChatClient.TenantProperty] = tenant;
            slot = await Admission.EnterAsync(queue, server.Value, chat, model, conversation, request.Options, "input", aborted);
        }
        catch (OpenAiErrorException e)
        {
            return e.Error.ToResult(context);
        }

        var shape = new Shape("resp_" + Guid.NewGuid().ToString("N"), "msg_" + Guid.NewGuid().ToString("N"), DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ChatModels.Id(chat), request);
        using (slot)
        {
            if (request.Stream)
            {
                await StreamAsync(context, chat, conversation, shape, tenant, store, aborted);
                return Results.Empty;
            }
            var response = await chat.GetResponseAsync(conversation, request.Options, aborted);
            RequestLog.Record(context, response.Usage);
            var result = shape.Response(response.Text, response.FinishReason, response.Usage, ChatRequest.Placements(response.AdditionalProperties));
            Keep(store, tenant, shape, conversation, response.Text, result);
            return Results.Text(result.ToJsonString(), "application/json");
        }
    }

    public static IResult Get(HttpContext context, string id, ResponseStore store)
    {
        try
        {
            var stored = store.Find(Admission.Tenant(context), id)
                ?? throw new OpenAiErrorException(new OpenAiError(404, $"No response with id '{id}' is stored for this API key.", "invalid_request_error", "id", "not_found"));
            return Results.Text(stored.Response.ToJsonString(), "application/json");
        }
        catch (OpenAiErrorException e)
        {
            return e.Error.ToResult(context);
        }
    }

    private static async Task StreamAsync(HttpContext context, IChatClient chat, List<ChatMessage> conversation, Shape shape, string tenant, ResponseStore store, CancellationToken aborted)
    {
        var http = context.Response;
        http.ContentType = "text/event-stream";
        http.Headers.CacheControl = "no-cache";
        int sequence = 0;
        async Task Send(string type, JsonObject fields)
        {
            fields["type"] = type;
            fields["sequence_number"] = sequence++;
            await EventStream.WriteAsync(context, $"event: {type}\ndata: {fields.ToJsonString()}\n\n", aborted);
        }

        var inProgress = shape.Response(null, null, null);
        await Send("response.created", new JsonObject { ["response"] = inProgress.DeepClone() });
        await Send("response.in_progress", new JsonObject { ["response"] = inProgress.DeepClone() });
        await Send("response.output_item.added", new JsonObject { ["output_index"] = 0, ["item"] = shape.Message(null, "in_progress") });
        await Send("response.content_part.added", shape.Part(new JsonObject { ["part"] = Shape.OutputText("") }));

        var text = new System.Text.StringBuilder();
        UsageDetails? usage = null;
        ChatFinishReason? finish = null;
        object? documents = null;
        var failure = await StreamFailure.CatchAsync(context, async () =>
        {
            await foreach (var update in chat.GetStreamingResponseAsync(conversation, shape.Request.Options, aborted))
            {
                if (update.Text is { Length: > 0 } delta)
                {
                    text.Append(delta);
                    await Send("response.output_text.delta", shape.Part(new JsonObject { ["delta"] = delta, ["logprobs"] = new JsonArray() }));
                    RequestLog.CountStreamed(context);
                }
                finish ??= update.FinishReason;
                if (update.Contents.OfType<UsageContent>().FirstOrDefault() is { } content) usage = content.Details;
                documents ??= ChatRequest.Placements(update.AdditionalProperties);
            }
        }, aborted);
        if (failure is not null)
        {
            await Send("error", new JsonObject { ["code"] = failure.Code, ["message"] = failure.Message, ["param"] = failure.Param });
            var failed = shape.Response(text.ToString(), null, null);
            failed["status"] = "failed";
            failed["error"] = new JsonObject { ["code"] = failure.Code, ["message"] = failure.Message };
            await Send("response.failed", new JsonObject { ["response"] = failed });
            return;
        }
        RequestLog.Record(context, usage);
        string output = text.ToString();
        await Send("response.output_text.done", shape.Part(new JsonObject { ["text"] = output, ["logprobs"] = new JsonArray() }));
        await Send("response.content_part.done", shape.Part(new JsonObject { ["part"] = Shape.OutputText(output) }));
        await Send("response.output_item.done", new JsonObject { ["output_index"] = 0, ["item"] = shape.Message(output, "completed") });
        var result = shape.Response(output, finish, usage, documents);
        Keep(store, tenant, shape, conversation, output, result);
        await Send(result["status"]!.GetValue<string>() == "incomplete" ? "response.incomplete" : "response.completed", new JsonObject { ["response"] = result.DeepClone() });
    }

    private static void Keep(ResponseStore store, string tenant, Shape shape, List<ChatMessage> conversation, string output, JsonObject result)
    {
        if (shape.Request.Store) store.Add(tenant, shape.Id, new ResponseStore.Stored([.. conversation, new ChatMessage(ChatRole.Assistant, output)], result));
    }

    /// <summary>The objects of one response, as OpenAI writes them.</summary>
    private sealed record Shape(string Id, string MessageId, long CreatedAt, string Model, ResponsesRequest Request)
    {
        public JsonObject Response(string? text, ChatFinishReason? finish, UsageDetails? usage, object? documents = null)
        {
            bool done = text is not null;
            bool cut = finish == ChatFinishReason.Length;
            var o = Request.Options;
            var response = new JsonObject
            {
                ["id"] = Id, ["object"] = "response", ["created_at"] = CreatedAt,
                ["status"] = !done ? "in_progress" : cut ? "incomplete" : "completed",
                ["error"] = null,
                ["incomplete_details"] = done && cut ? new JsonObject { ["reason"] = "max_output_tokens" } : null,
                ["instructions"] = Request.Instructions,
                ["max_output_tokens"] = o.MaxOutputTokens,
                ["model"] = Model,
                ["output"] = done ? new JsonArray(Message(text, "completed")) : new JsonArray(),
                ["parallel_tool_calls"] = true,
                ["previous_response_id"] = Request.PreviousResponseId,
                ["reasoning"] = new JsonObject { ["effort"] = null, ["summary"] = null },
                ["store"] = Request.Store,
                ["temperature"] = o.Temperature ?? 1.0,
                ["text"] = new JsonObject { ["format"] = new JsonObject { ["type"] = "text" } },
                ["tool_choice"] = "none",
                ["tools"] = new JsonArray(),
                ["top_p"] = o.TopP ?? 1.0,
                ["truncation"] = "disabled",
                ["usage"] = usage is null ? null : new JsonObject
                {
                    ["input_tokens"] = usage.InputTokenCount ?? 0,
                    ["input_tokens_details"] = new JsonObject { ["cached_tokens"] = usage.CachedInputTokenCount ?? 0 },
                    ["output_tokens"] = usage.OutputTokenCount ?? 0,
                    ["output_tokens_details"] = new JsonObject { ["reasoning_tokens"] = 0 },
                    ["total_tokens"] = usage.TotalTokenCount ?? 0,
                },
                ["user"] = Request.User,
                ["metadata"] = Request.Metadata.ValueKind == JsonValueKind.Object ? JsonNode.Parse(Request.Metadata.GetRawText()) : new JsonObject(),
            };
            // An extension, only when the input had documents: where each was placed from the cache.
            if (documents is not null) response["ortkv_documents"] = JsonSerializer.SerializeToNode(documents);
            return response;
        }

        public JsonObject Message(string? text, string status) => new()
        {
            ["type"] = "message", ["id"] = MessageId, ["status"] = status, ["role"] = "assistant",
            ["content"] = text is null ? new JsonArray() : new JsonArray(OutputText(text)),
        };

        /// <summary>An event about the one text part: its item, output and content indexes, and <paramref name="fields"/>.</summary>
        public JsonObject Part(JsonObject fields)
        {
            fields["item_id"] = MessageId;
            fields["output_index"] = 0;
            fields["content_index"] = 0;
            return fields;
        }

        public static JsonObject OutputText(string text) => new() { ["type"] = "output_text", ["text"] = text, ["annotations"] = new JsonArray() };
    }
}
