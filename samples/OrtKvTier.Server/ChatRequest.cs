using System.Text.Json;
using Microsoft.Extensions.AI;

namespace OrtKvTier.Server;

/// <summary>A <c>POST /v1/chat/completions</c> body, checked: what is wrong is an <see cref="OpenAiErrorException"/> naming the field.</summary>
public sealed record ChatRequest(string Model, List<ChatMessage> Messages, ChatOptions Options, bool Stream, bool IncludeUsage)
{
    private static readonly string[] Roles = ["system", "developer", "user", "assistant"];

    /// <summary>Reads and checks a request body.</summary>
    public static async Task<ChatRequest> ReadAsync(HttpRequest request, CancellationToken cancellationToken)
    {
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(request.Body, cancellationToken: cancellationToken);
        }
        catch (JsonException e)
        {
            throw Invalid($"We could not parse the JSON body of your request ({e.Message}). Send a JSON object with \"model\" and \"messages\".", null, "invalid_json");
        }
        using (document)
            return Parse(document.RootElement);
    }

    private static ChatRequest Parse(JsonElement body)
    {
        if (body.ValueKind != JsonValueKind.Object) throw Invalid($"The body must be a JSON object; got {body.ValueKind}.", null, "invalid_json");
        var model = String(body, "model") ?? throw Invalid("'model' is required: the id GET /v1/models lists.", "model", "missing_required_parameter");
        if (!body.TryGetProperty("messages", out var messagesJson) || messagesJson.ValueKind != JsonValueKind.Array || messagesJson.GetArrayLength() == 0)
            throw Invalid("'messages' must be a non-empty array of {role, content}.", "messages", "missing_required_parameter");
        var messages = new List<ChatMessage>();
        int index = 0;
        foreach (var message in messagesJson.EnumerateArray())
        {
            messages.Add(Message(message, $"messages[{index}]"));
            index++;
        }
        foreach (var unsupported in new[] { "tools", "functions", "tool_choice", "logprobs", "response_format", "audio" })
            if (body.TryGetProperty(unsupported, out var value) && value.ValueKind is not (JsonValueKind.Null or JsonValueKind.False))
                throw Invalid($"'{unsupported}' is not supported by this server.", unsupported, "unsupported_parameter");
        if (Int(body, "n") is { } n && n != 1) throw Invalid($"'n' must be 1; got {n}.", "n", "unsupported_value");
        var options = new ChatOptions
        {
            MaxOutputTokens = Int(body, "max_completion_tokens") ?? Int(body, "max_tokens"),
            Temperature = Float(body, "temperature", 0, 2),
            TopP = Float(body, "top_p", 0, 1),
            Seed = Long(body, "seed"),
            StopSequences = Stops(body),
        };
        if (options.MaxOutputTokens is <= 0)
            throw Invalid($"'max_completion_tokens' must be positive; got {options.MaxOutputTokens}.", body.TryGetProperty("max_completion_tokens", out _) ? "max_completion_tokens" : "max_tokens", "invalid_value");
        bool stream = Bool(body, "stream") ?? false;
        bool includeUsage = body.TryGetProperty("stream_options", out var streamOptions) && streamOptions.ValueKind == JsonValueKind.Object && (Bool(streamOptions, "include_usage") ?? false);
        return new ChatRequest(model, messages, options, stream, includeUsage);
    }

    private static ChatMessage Message(JsonElement message, string where)
    {
        if (message.ValueKind != JsonValueKind.Object) throw Invalid($"{where} must be an object with 'role' and 'content'.", where, "invalid_type");
        var role = String(message, "role") ?? throw Invalid($"{where}.role is required.", $"{where}.role", "missing_required_parameter");
        if (!Roles.Contains(role)) throw Invalid($"{where}.role '{role}' is not supported; use one of {string.Join(", ", Roles)}.", $"{where}.role", "invalid_value");
        if (!message.TryGetProperty("content", out var content)) throw Invalid($"{where}.content is required.", $"{where}.content", "missing_required_parameter");
        string text = content.ValueKind switch
        {
            JsonValueKind.String => content.GetString()!,
            JsonValueKind.Array => string.Concat(content.EnumerateArray().Select((part, i) =>
                part.ValueKind == JsonValueKind.Object && String(part, "type") == "text" && String(part, "text") is { } partText ? partText
                : throw Invalid($"{where}.content[{i}] must be a text part ({{\"type\": \"text\", \"text\": ...}}); this server reads text only.", $"{where}.content", "invalid_value"))),
            _ => throw Invalid($"{where}.content must be a string or an array of text parts.", $"{where}.content", "invalid_type"),
        };
        return new ChatMessage(role == "developer" ? ChatRole.System : new ChatRole(role), text);
    }

    private static List<string>? Stops(JsonElement body)
    {
        if (!body.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null) return null;
        var stops = stop.ValueKind switch
        {
            JsonValueKind.String => [stop.GetString()!],
            JsonValueKind.Array when stop.EnumerateArray().All(s => s.ValueKind == JsonValueKind.String) => stop.EnumerateArray().Select(s => s.GetString()!).ToList(),
            _ => throw Invalid("'stop' must be a string or an array of strings.", "stop", "invalid_type"),
        };
        return stops.Count <= 4 ? stops : throw Invalid($"'stop' holds at most 4 sequences; got {stops.Count}.", "stop", "invalid_value");
    }

    private static string? String(JsonElement body, string name) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind == JsonValueKind.String ? value.GetString() : throw Invalid($"'{name}' must be a string; got {value.ValueKind}.", name, "invalid_type");

    private static int? Int(JsonElement body, string name) =>
        Long(body, name) is not { } value ? null : value is >= int.MinValue and <= int.MaxValue ? (int)value : throw Invalid($"'{name}' is out of range: {value}.", name, "invalid_value");

    private static long? Long(JsonElement body, string name) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var number) ? number
        : throw Invalid($"'{name}' must be an integer; got {value}.", name, "invalid_type");

    private static float? Float(JsonElement body, string name, double min, double max)
    {
        if (!body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        if (value.ValueKind != JsonValueKind.Number) throw Invalid($"'{name}' must be a number; got {value.ValueKind}.", name, "invalid_type");
        double number = value.GetDouble();
        return number >= min && number <= max ? (float)number : throw Invalid($"'{name}' must be between {min} and {max}; got {number}.", name, "invalid_value");
    }

    private static bool? Bool(JsonElement body, string name) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean()
        : throw Invalid($"'{name}' must be true or false; got {value.ValueKind}.", name, "invalid_type");

    private static OpenAiErrorException Invalid(string message, string? param, string code) => new(OpenAiError.BadRequest(message, param, code));
}
