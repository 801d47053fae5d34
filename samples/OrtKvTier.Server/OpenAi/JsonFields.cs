using System.Text.Json;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// Reads the fields of a request body, each checked: a value of the wrong type, out of range or not valid Unicode is an
/// <see cref="OpenAiErrorException"/> (400) naming the field by its path (<c>messages[2].content</c>).
/// </summary>
public static class JsonFields
{
    /// <summary>A string field; null when absent or null.</summary>
    public static string? String(JsonElement body, string name, string? path = null) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind == JsonValueKind.String ? Text(value, path ?? name)
        : throw Invalid($"'{path ?? name}' must be a string; got {Kind(value)}.", path ?? name, "invalid_type");

    /// <summary>
    /// A JSON string's text. Strings that are not valid Unicode (a lone surrogate such as <c>"\ud800"</c>, bytes that are
    /// not UTF-8) are refused naming the field: the model would read something other than what was sent.
    /// </summary>
    public static string Text(JsonElement value, string path)
    {
        try
        {
            // GetString replaces bytes that are not UTF-8; the raw value says whether there were any.
            if (!System.Text.Unicode.Utf8.IsValid(System.Runtime.InteropServices.JsonMarshal.GetRawUtf8Value(value)))
                throw new InvalidOperationException("not UTF-8");
            var text = value.GetString()!;
            int bad = FirstLoneSurrogate(text);
            return bad < 0 ? text
                : throw Invalid($"'{path}' is not valid Unicode: a lone surrogate (\\u{(int)text[bad]:x4}) at character {bad}. Send whole characters (a string cut in the middle of an emoji leaves half of one).", path, "invalid_value");
        }
        catch (InvalidOperationException)
        {
            throw Invalid($"'{path}' is not valid Unicode: its bytes are not UTF-8 or it holds a lone surrogate escape. Send the body as UTF-8 with whole characters.", path, "invalid_value");
        }
    }

    public static int? Int(JsonElement body, string name, int min = int.MinValue, string? path = null)
    {
        if (Long(body, name, path) is not { } value) return null;
        return value >= min && value <= int.MaxValue ? (int)value
            : throw Invalid($"'{path ?? name}' must be an integer from {min} to {int.MaxValue}; got {value}.", path ?? name, "invalid_value");
    }

    public static long? Long(JsonElement body, string name, string? path = null) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind == JsonValueKind.Number && value.TryGetInt64(out var number) ? number
        : value.ValueKind == JsonValueKind.Number ? throw Invalid($"'{path ?? name}' must be an integer that fits in 64 bits; got {value.GetRawText()}.", path ?? name, "invalid_value")
        : throw Invalid($"'{path ?? name}' must be an integer; got {Kind(value)}.", path ?? name, "invalid_type");

    public static double? Number(JsonElement body, string name, double min, double max, string? path = null)
    {
        if (!body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null) return null;
        path ??= name;
        if (value.ValueKind != JsonValueKind.Number) throw Invalid($"'{path}' must be a number; got {Kind(value)}.", path, "invalid_type");
        return value.TryGetDouble(out var number) && double.IsFinite(number) && number >= min && number <= max ? number
            : throw Invalid($"'{path}' must be between {min} and {max}; got {value.GetRawText()}.", path, "invalid_value");
    }

    public static bool? Bool(JsonElement body, string name, string? path = null) =>
        !body.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null ? null
        : value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean()
        : throw Invalid($"'{path ?? name}' must be true or false; got {Kind(value)}.", path ?? name, "invalid_type");

    /// <summary>Stop sequences: a string or at most four strings.</summary>
    public static List<string>? Stops(JsonElement body)
    {
        if (!body.TryGetProperty("stop", out var stop) || stop.ValueKind == JsonValueKind.Null) return null;
        var stops = stop.ValueKind switch
        {
            JsonValueKind.String => [Text(stop, "stop")],
            JsonValueKind.Array when stop.EnumerateArray().All(s => s.ValueKind == JsonValueKind.String) => stop.EnumerateArray().Select((s, i) => Text(s, $"stop[{i}]")).ToList(),
            _ => throw Invalid("'stop' must be a string or an array of strings.", "stop", "invalid_type"),
        };
        if (stops.Count > 4) throw Invalid($"'stop' holds at most 4 sequences; got {stops.Count}.", "stop", "invalid_value");
        return stops.Any(s => s.Length == 0) ? throw Invalid("'stop' sequences must not be empty.", "stop", "invalid_value") : stops;
    }

    /// <summary>OpenAI's <c>logit_bias</c>: an object of token id (a string of digits) → bias in [-100, 100].</summary>
    public static IReadOnlyDictionary<int, double>? LogitBias(JsonElement body)
    {
        if (!body.TryGetProperty("logit_bias", out var map) || map.ValueKind == JsonValueKind.Null) return null;
        if (map.ValueKind != JsonValueKind.Object) throw Invalid($"'logit_bias' must be an object of token id → bias; got {Kind(map)}.", "logit_bias", "invalid_type");
        var bias = new Dictionary<int, double>();
        foreach (var entry in map.EnumerateObject())
        {
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var token))
                throw Invalid($"'logit_bias' keys must be token ids (digits); got \"{entry.Name}\".", "logit_bias", "invalid_value");
            bias[token] = Number(map, entry.Name, -100, 100, $"logit_bias.{entry.Name}")!.Value;
        }
        return bias.Count == 0 ? null : bias;
    }

    /// <summary>
    /// Fields a client may send with their harmless defaults: <c>tools: []</c>, <c>tool_choice: "none"</c> (or
    /// <c>"auto"</c> with no tools), <c>response_format</c>/<c>text.format</c> of type <c>text</c>. Anything else in them
    /// is refused: this server generates text only.
    /// </summary>
    public static void TextOnly(JsonElement body, string formatField)
    {
        foreach (var name in new[] { "tools", "functions" })
            if (body.TryGetProperty(name, out var tools) && tools.ValueKind != JsonValueKind.Null)
            {
                if (tools.ValueKind != JsonValueKind.Array) throw Invalid($"'{name}' must be an array; got {Kind(tools)}.", name, "invalid_type");
                if (tools.GetArrayLength() > 0) throw Invalid($"'{name}' is not supported by this server: it generates text only. Send no tools (or an empty array).", name, "unsupported_parameter");
            }
        if (body.TryGetProperty("tool_choice", out var choice) && choice.ValueKind != JsonValueKind.Null
            && !(choice.ValueKind == JsonValueKind.String && Text(choice, "tool_choice") is "none" or "auto"))
            throw Invalid("'tool_choice' must be \"none\" (or \"auto\" with no tools): this server calls no tools.", "tool_choice", "unsupported_parameter");
        var format = formatField.Split('.') switch
        {
            [var outer, var inner] when body.TryGetProperty(outer, out var o) && o.ValueKind == JsonValueKind.Object && o.TryGetProperty(inner, out var f) => f,
            [var only] when body.TryGetProperty(only, out var f) => f,
            _ => default,
        };
        if (format.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null)
            && !(format.ValueKind == JsonValueKind.Object && String(format, "type", $"{formatField}.type") == "text"))
            throw Invalid($"'{formatField}' must be {{\"type\": \"text\"}}: this server generates plain text only.", formatField, "unsupported_parameter");
        if (body.TryGetProperty("logprobs", out var logprobs) && logprobs.ValueKind is not (JsonValueKind.Null or JsonValueKind.False))
            throw Invalid("'logprobs' is not supported by this server.", "logprobs", "unsupported_parameter");
        if (body.TryGetProperty("audio", out var audio) && audio.ValueKind != JsonValueKind.Null)
            throw Invalid("'audio' is not supported by this server.", "audio", "unsupported_parameter");
    }

    /// <summary>A 400 in OpenAI's shape.</summary>
    public static OpenAiErrorException Invalid(string message, string? param, string code) => new(OpenAiError.BadRequest(message, param, code));

    private static string Kind(JsonElement value) => value.ValueKind.ToString().ToLowerInvariant();

    private static int FirstLoneSurrogate(string text)
    {
        for (int i = 0; i < text.Length; i++)
        {
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) i++;
            else if (char.IsSurrogate(text[i])) return i;
        }
        return -1;
    }
}
