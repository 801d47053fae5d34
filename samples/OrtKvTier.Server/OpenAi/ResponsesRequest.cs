using System.Text.Json;
using Microsoft.Extensions.AI;
using static OrtKvTier.Server.OpenAi.JsonFields;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// A <c>POST /v1/responses</c> body, checked: text input (a string, or message items whose content is text parts),
/// instructions, sampling, <c>previous_response_id</c>, <c>store</c>, <c>metadata</c>, streaming.
/// </summary>
public sealed record ResponsesRequest(
    string Model, List<ChatMessage> Input, string? Instructions, string? PreviousResponseId, ChatOptions Options, bool Stream, bool Store,
    JsonElement Metadata, string? User)
{
    private static readonly string[] Roles = ["system", "developer", "user", "assistant"];

    public static ResponsesRequest Parse(JsonElement body)
    {
        var model = String(body, "model") ?? throw Invalid("'model' is required: the id GET /v1/models lists.", "model", "missing_required_parameter");
        if (!body.TryGetProperty("input", out var input) || input.ValueKind == JsonValueKind.Null)
            throw Invalid("'input' is required: a string or an array of message items.", "input", "missing_required_parameter");
        var messages = input.ValueKind switch
        {
            JsonValueKind.String => [new ChatMessage(ChatRole.User, Text(input, "input"))],
            JsonValueKind.Array => input.EnumerateArray().Select((item, i) => Item(item, $"input[{i}]")).ToList(),
            _ => throw Invalid("'input' must be a string or an array of message items.", "input", "invalid_type"),
        };
        if (messages.Count == 0) throw Invalid("'input' must not be empty.", "input", "missing_required_parameter");
        TextOnly(body, "text.format");
        if (body.TryGetProperty("reasoning", out var reasoning) && reasoning.ValueKind == JsonValueKind.Object && String(reasoning, "effort", "reasoning.effort") is { } effort)
            throw Invalid($"'reasoning.effort' ({effort}) is not supported: this model does not reason separately.", "reasoning.effort", "unsupported_parameter");
        if (Bool(body, "background") == true) throw Invalid("'background' is not supported by this server.", "background", "unsupported_parameter");
        var metadata = body.TryGetProperty("metadata", out var m) && m.ValueKind != JsonValueKind.Null ? m : default;
        if (metadata.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Object))
            throw Invalid("'metadata' must be an object of string values.", "metadata", "invalid_type");
        if (metadata.ValueKind == JsonValueKind.Object)
            foreach (var entry in metadata.EnumerateObject())
                if (String(metadata, entry.Name, $"metadata.{entry.Name}") is null) throw Invalid($"'metadata.{entry.Name}' must be a string.", $"metadata.{entry.Name}", "invalid_type");
        var options = ChatRequest.Sampling(body);
        // OpenAI takes at least 16 output tokens here.
        options.MaxOutputTokens = Int(body, "max_output_tokens", 16);
        options.Instructions = String(body, "instructions");
        return new ResponsesRequest(model, messages, options.Instructions, String(body, "previous_response_id"), options, Bool(body, "stream") ?? false,
            Bool(body, "store") ?? true, metadata.ValueKind == JsonValueKind.Object ? metadata.Clone() : default, String(body, "user"));
    }

    private static ChatMessage Item(JsonElement item, string where)
    {
        if (item.ValueKind != JsonValueKind.Object) throw Invalid($"{where} must be a message item ({{\"role\", \"content\"}}).", where, "invalid_type");
        if (String(item, "type", $"{where}.type") is { } type && type != "message")
            throw Invalid($"{where}.type '{type}' is not supported: this server reads message items only.", $"{where}.type", "unsupported_value");
        var role = String(item, "role", $"{where}.role") ?? throw Invalid($"{where}.role is required.", $"{where}.role", "missing_required_parameter");
        if (!Roles.Contains(role)) throw Invalid($"{where}.role '{role}' is not supported; use one of {string.Join(", ", Roles)}.", $"{where}.role", "invalid_value");
        if (!item.TryGetProperty("content", out var content)) throw Invalid($"{where}.content is required.", $"{where}.content", "missing_required_parameter");
        var text = ChatRequest.Content(content, $"{where}.content", role == "assistant" ? ["output_text", "input_text", "text"] : ["input_text", "text"]);
        return ChatRequest.MarkDocument(item, new ChatMessage(role == "developer" ? ChatRole.System : new ChatRole(role), text), where);
    }
}
