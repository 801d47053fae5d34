namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// What ends a stream that already sent its 200: a client that left ends it quietly; a request the model refuses (an
/// <see cref="ArgumentException"/>) is a 400-shaped error event; anything else is a fault of the server, logged with
/// its stack and sent as a 500-shaped event.
/// </summary>
public static class StreamFailure
{
    public static async Task<OpenAiError?> CatchAsync(HttpContext context, Func<Task> stream, CancellationToken aborted)
    {
        try
        {
            await stream();
            return null;
        }
        catch (OperationCanceledException) when (aborted.IsCancellationRequested)
        {
            throw;
        }
        catch (ArgumentException e)
        {
            return OpenAiError.BadRequest(e.Message, null, "invalid_value");
        }
        catch (Exception e)
        {
            context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("OrtKvTier.Server").LogError(e, "A stream failed after its 200 (trace {TraceId})", context.TraceIdentifier);
            return OpenAiError.ServerFault(context.TraceIdentifier);
        }
    }
}
