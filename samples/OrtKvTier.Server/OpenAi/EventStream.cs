using Microsoft.Extensions.Options;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// Writes the events of a streamed answer. A client that takes nothing for <see cref="ServerOptions.StreamWriteTimeoutSeconds"/>
/// (stopped reading, or gone without the server noticing: a disconnect is not always seen while a write waits on a
/// full socket) has its connection aborted, so its generation stops and its slot frees.
/// </summary>
public static class EventStream
{
    public static async Task WriteAsync(HttpContext context, string text, CancellationToken aborted)
    {
        var timeout = TimeSpan.FromSeconds(Math.Max(1, context.RequestServices.GetRequiredService<IOptions<ServerOptions>>().Value.StreamWriteTimeoutSeconds));
        using var stalled = CancellationTokenSource.CreateLinkedTokenSource(aborted);
        stalled.CancelAfter(timeout);
        try
        {
            await context.Response.WriteAsync(text, stalled.Token);
            await context.Response.Body.FlushAsync(stalled.Token);
        }
        catch (OperationCanceledException) when (!aborted.IsCancellationRequested)
        {
            // Timed out, not aborted: handled below.
        }
        if (stalled.IsCancellationRequested || aborted.IsCancellationRequested)
        {
            if (!aborted.IsCancellationRequested)
            {
                context.Abort();
                aborted.WaitHandle.WaitOne(TimeSpan.FromSeconds(1)); // the request's token follows the abort: the request ends as one whose client left
            }
            throw new OperationCanceledException($"The client took nothing for {timeout.TotalSeconds:F0} s or left.", aborted);
        }
    }
}
