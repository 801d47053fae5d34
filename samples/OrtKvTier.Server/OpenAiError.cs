using System.Text.Json;

namespace OrtKvTier.Server;

/// <summary>An error in OpenAI's shape: <c>{"error": {"message", "type", "param", "code"}}</c> with its HTTP status.</summary>
public sealed record OpenAiError(int Status, string Message, string Type, string? Param = null, string? Code = null)
{
    public static OpenAiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, "invalid_request_error", param, code);

    public IResult ToResult(HttpContext context, int? retryAfterSeconds = null)
    {
        if (retryAfterSeconds is { } seconds) context.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return Results.Json(new { error = new { message = Message, type = Type, param = Param, code = Code } }, statusCode: Status);
    }

    /// <summary>The error as an SSE event (after a stream began, the status line is already sent).</summary>
    public string ToEvent() => "data: " + JsonSerializer.Serialize(new { error = new { message = Message, type = Type, param = Param, code = Code } }) + "\n\n";
}

/// <summary>Thrown while reading a request: answered as its <see cref="OpenAiError"/>.</summary>
public sealed class OpenAiErrorException(OpenAiError error) : Exception(error.Message)
{
    public OpenAiError Error { get; } = error;
}
