using System.Text.Json;
using Microsoft.AspNetCore.Http.Features;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// A request's JSON body, read within <see cref="ServerOptions.MaxRequestBodyBytes"/>: a larger body is a 413 before it
/// is read (its Content-Length) or as soon as it passes the limit (chunked); a body that arrives too slowly is a 408;
/// what is not a JSON object is a 400. Every refusal is in OpenAI's shape.
/// </summary>
public static class RequestBody
{
    /// <summary>
    /// A body over the limit whose Content-Length is at most this is read and dropped before the 413, so that every
    /// client (HttpClient too, which reads no answer before it has sent its body) gets the answer rather than a reset;
    /// a longer one is answered at once and its connection closed. Reading and dropping holds no memory.
    /// </summary>
    public const long DrainBytes = 64L << 20;

    public static async Task<JsonDocument> ReadAsync(HttpRequest request, long maxBytes, CancellationToken cancellationToken)
    {
        var limit = request.HttpContext.Features.Get<IHttpMaxRequestBodySizeFeature>();
        if (request.ContentLength is { } length && length > maxBytes)
        {
            if (length <= DrainBytes && limit is { IsReadOnly: false })
            {
                limit.MaxRequestBodySize = length;
                await request.Body.CopyToAsync(Stream.Null, cancellationToken);
            }
            throw TooLarge(length, maxBytes);
        }
        if (limit is { IsReadOnly: false }) limit.MaxRequestBodySize = maxBytes;
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(request.Body, cancellationToken: cancellationToken);
        }
        catch (JsonException e)
        {
            throw JsonFields.Invalid($"We could not parse the JSON body of your request ({e.Message}). Send a JSON object, UTF-8 encoded.", null, "invalid_json");
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw TooLarge(null, maxBytes);
        }
        catch (BadHttpRequestException e)
        {
            throw new OpenAiErrorException(new OpenAiError(e.StatusCode, $"The request body could not be read: {e.Message}", "invalid_request_error", null,
                e.StatusCode == StatusCodes.Status408RequestTimeout ? "request_timeout" : "invalid_request"));
        }
        if (document.RootElement.ValueKind == JsonValueKind.Object) return document;
        var kind = document.RootElement.ValueKind;
        document.Dispose();
        throw JsonFields.Invalid($"The body must be a JSON object; got {kind.ToString().ToLowerInvariant()}.", null, "invalid_json");
    }

    private static OpenAiErrorException TooLarge(long? length, long maxBytes) => new(new OpenAiError(413,
        $"The request body is {(length is { } l ? $"{l:N0} bytes" : "larger than the limit")}; this server takes at most {maxBytes:N0} bytes (Server:MaxRequestBodyBytes). Send a shorter conversation.",
        "invalid_request_error", null, "request_too_large"));
}
