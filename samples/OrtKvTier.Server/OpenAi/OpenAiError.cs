using System.Text.Json;

namespace OrtKvTier.Server.OpenAi;

/// <summary>An error in OpenAI's shape: <c>{"error": {"message", "type", "param", "code"}}</c> with its HTTP status (and Retry-After for a 429).</summary>
public sealed record OpenAiError(int Status, string Message, string Type, string? Param = null, string? Code = null, int? RetryAfterSeconds = null)
{
    public static OpenAiError BadRequest(string message, string? param = null, string? code = null) => new(400, message, "invalid_request_error", param, code);

    /// <summary>A fault of the server itself (the message names no internals; the log has the details).</summary>
    public static OpenAiError ServerFault(string traceId) => new(500, $"The server had an error while processing your request (trace {traceId}). Retry; if it persists, report it with the trace id.", "server_error", null, "server_error");

    /// <summary>The error OpenAI gives for a status this server answers without a handler (an unknown route, a wrong method).</summary>
    public static OpenAiError ForStatus(HttpRequest request, int status) => status switch
    {
        404 => new(404, $"Invalid URL ({request.Method} {request.Path}): this server serves GET /v1/models, GET /v1/models/{{id}}, POST /v1/chat/completions, POST /v1/responses, GET /v1/responses/{{id}} and GET /health.", "invalid_request_error", null, "unknown_url"),
        405 => new(405, $"Method {request.Method} is not allowed on {request.Path}.", "invalid_request_error", null, "method_not_allowed"),
        413 => new(413, "The request body is larger than this server takes (Server:MaxRequestBodyBytes).", "invalid_request_error", null, "request_too_large"),
        _ => new(status, $"The request failed with HTTP status {status}.", status >= 500 ? "server_error" : "invalid_request_error", null, null),
    };

    public IResult ToResult(HttpContext context)
    {
        if (RetryAfterSeconds is { } seconds) context.Response.Headers.RetryAfter = seconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        return Results.Json(Body, statusCode: Status);
    }

    /// <summary>The <c>{"error": ...}</c> object.</summary>
    public object Body => new { error = new { message = Message, type = Type, param = Param, code = Code } };

    /// <summary>The error as a chat completions SSE event (after a stream began, the status line is already sent).</summary>
    public string ToEvent() => "data: " + JsonSerializer.Serialize(Body) + "\n\n";
}

/// <summary>Thrown while reading or admitting a request: answered as its <see cref="OpenAiError"/>.</summary>
public sealed class OpenAiErrorException(OpenAiError error) : Exception(error.Message)
{
    public OpenAiError Error { get; } = error;
}
