using System.Text.Json;
using Microsoft.Extensions.AI;
using OrtKvTier.Chat;
using static OrtKvTier.Server.OpenAi.JsonFields;

namespace OrtKvTier.Server.OpenAi;

/// <summary>A <c>POST /v1/chat/completions</c> body, checked: what is wrong is an <see cref="OpenAiErrorException"/> naming the field.</summary>
public sealed record ChatRequest(string Model, List<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage)
{
    private static readonly string[] Roles = ["system", "developer", "user", "assistant"];

    /// <summary>Reads and checks a body (an object: <see cref="RequestBody.ReadAsync"/> checked that).</summary>
    public static ChatRequest Parse(JsonElement body)
    {
        var model = String(body, "model") ?? throw Invalid("'model' is required: the id GET /v1/models lists.", "model", "missing_required_parameter");
        if (!body.TryGetProperty("messages", out var messagesJson) || messagesJson.ValueKind != JsonValueKind.Array || messagesJson.GetArrayLength() == 0)
            throw Invalid("'messages' must be a non-empty array of {role, content}.", "messages", "missing_required_parameter");
        var messages = messagesJson.EnumerateArray().Select((message, i) => Message(message, $"messages[{i}]")).ToList();
        TextOnly(body, "response_format");
        if (Int(body, "n") is { } n && n != 1) throw Invalid($"'n' must be 1; got {n}.", "n", "unsupported_value");
        var options = Sampling(body);
        options.MaxOutputTokens = Int(body, "max_completion_tokens", 1) ?? Int(body, "max_tokens", 1);
        bool stream = Bool(body, "stream") ?? false;
        bool includeUsage = body.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind == JsonValueKind.Object
            && (Bool(streamOptions, "include_usage", "stream_options.include_usage") ?? false);
        return new ChatRequest(model, messages, options, stream, includeUsage);
    }

    /// <summary>The sampling fields both OpenAI APIs share, in OpenAI's ranges: temperature, top_p, penalties, logit bias, seed, stop.</summary>
    public static ChatOptions Sampling(JsonElement body)
    {
        var options = new ChatOptions
        {
            Temperature = (float?)Number(body, "temperature", 0, 2),
            TopP = (float?)Number(body, "top_p", 0, 1),
            PresencePenalty = (float?)Number(body, "presence_penalty", -2, 2),
            FrequencyPenalty = (float?)Number(body, "frequency_penalty", -2, 2),
            Seed = Long(body, "seed"),
            StopSequences = Stops(body),
        };
        if (LogitBias(body) is { } bias) (options.AdditionalProperties ??= [])[KvChatClient.LogitBiasProperty] = bias;
        return options;
    }

    private static ChatMessage Message(JsonElement message, string where)
    {
        if (message.ValueKind != JsonValueKind.Object) throw Invalid($"{where} must be an object with 'role' and 'content'.", where, "invalid_type");
        var role = String(message, "role", $"{where}.role") ?? throw Invalid($"{where}.role is required.", $"{where}.role", "missing_required_parameter");
        if (!Roles.Contains(role)) throw Invalid($"{where}.role '{role}' is not supported; use one of {string.Join(", ", Roles)}.", $"{where}.role", "invalid_value");
        if (!message.TryGetProperty("content", out var content)) throw Invalid($"{where}.content is required.", $"{where}.content", "missing_required_parameter");
        return MarkDocument(message, new ChatMessage(role == "developer" ? ChatRole.System : new ChatRole(role), Content(content, $"{where}.content", "text")), where);
    }

    /// <summary>
    /// An extension (README): <c>"ortkv_document": true</c> on a message (a chat message, or a Responses input item) marks
    /// one whose KV may come from wherever it stood before; anything but a boolean is a 400 naming the field.
    /// </summary>
    public static ChatMessage MarkDocument(JsonElement message, ChatMessage chat, string where)
    {
        if (!message.TryGetProperty("ortkv_document", out var document)) return chat;
        if (document.ValueKind is not (JsonValueKind.True or JsonValueKind.False))
            throw Invalid($"{where}.ortkv_document must be true or false; got {document.ValueKind.ToString().ToLowerInvariant()}.", $"{where}.ortkv_document", "invalid_type");
        if (document.ValueKind == JsonValueKind.True) (chat.AdditionalProperties ??= [])[KvChatClient.DocumentProperty] = true;
        return chat;
    }

    /// <summary>Where a response's documents were placed from the cache (offset, tokens, cached, moved, recomputed, delta of each); null when it had none.</summary>
    public static object? Placements(AdditionalPropertiesDictionary? details) =>
        details?.GetValueOrDefault("documents") is IReadOnlyList<OrtKvTier.Generation.DocumentPlacement> { Count: > 0 } placed
            ? placed.Select(p => new { offset = p.Offset, tokens = p.Tokens, cached_tokens = p.CachedTokens, moved_tokens = p.MovedTokens, recomputed_tokens = p.RecomputedTokens, delta = p.Delta }).ToList()
            : null;

    /// <summary>A message's content: a string or an array of text parts (<c>{"type": partType, "text": ...}</c>).</summary>
    public static string Content(JsonElement content, string where, params string[] partTypes) => content.ValueKind switch
    {
        JsonValueKind.String => Text(content, where),
        JsonValueKind.Array => string.Concat(content.EnumerateArray().Select((part, i) =>
            part.ValueKind == JsonValueKind.Object && String(part, "type", $"{where}[{i}].type") is { } type && partTypes.Contains(type)
                && String(part, "text", $"{where}[{i}].text") is { } partText ? partText
            : throw Invalid($"{where}[{i}] must be a text part ({{\"type\": \"{partTypes[0]}\", \"text\": ...}}); this server reads text only.", $"{where}[{i}]", "invalid_value"))),
        _ => throw Invalid($"{where} must be a string or an array of text parts.", where, "invalid_type"),
    };
}
