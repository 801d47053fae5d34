using System.Diagnostics;
using Microsoft.Extensions.AI;
using OrtKvTier.Server.OpenAi;

namespace OrtKvTier.Server;

/// <summary>
/// The server's outermost layer: one Information line per request (route, status, prompt/cached/completion tokens,
/// milliseconds); an OpenAI-shaped body for every error status answered without one (unknown route, wrong method); a
/// fault of the server itself is a 500 in OpenAI's shape and the only thing logged with a stack trace.
/// </summary>
public static class RequestLog
{
    private const string UsageKey = "ortkv.usage";
    private const string StreamedKey = "ortkv.streamed";

    /// <summary>What the request used, for its log line.</summary>
    public static void Record(HttpContext context, UsageDetails? usage) => context.Items[UsageKey] = usage;

    /// <summary>One more piece of text sent on a stream: the log line of a client that left says how far its answer got.</summary>
    public static void CountStreamed(HttpContext context) =>
        context.Items[StreamedKey] = (context.Items.TryGetValue(StreamedKey, out var count) ? (int)count! : 0) + 1;

    public static async Task Middleware(HttpContext context, RequestDelegate next)
    {
        var clock = Stopwatch.StartNew();
        var log = context.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger("OrtKvTier.Server.Requests");
        bool left = false;
        try
        {
            await next(context);
            if (context.Response.StatusCode >= 400 && !context.Response.HasStarted && context.Response.ContentType is null)
                await OpenAiError.ForStatus(context.Request, context.Response.StatusCode).ToResult(context).ExecuteAsync(context);
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            left = true;
        }
        catch (Exception e) when (!context.Response.HasStarted)
        {
            log.LogError(e, "{Method} {Path} failed (trace {TraceId})", context.Request.Method, context.Request.Path, context.TraceIdentifier);
            await OpenAiError.ServerFault(context.TraceIdentifier).ToResult(context).ExecuteAsync(context);
        }
        var usage = context.Items.TryGetValue(UsageKey, out var value) ? value as UsageDetails : null;
        int streamed = context.Items.TryGetValue(StreamedKey, out var count) ? (int)count! : 0;
        // Health probes come every few seconds from whatever watches the server: Debug, not Information.
        log.Log(context.Request.Path == "/health" && context.Response.StatusCode == 200 ? LogLevel.Debug : LogLevel.Information, "{Method} {Path} {Status} in {Ms:F0} ms{Usage}", context.Request.Method, context.Request.Path,
            left ? $"client left after {streamed} streamed pieces" : context.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture), clock.Elapsed.TotalMilliseconds,
            usage is null ? "" : $": {usage.InputTokenCount} prompt tokens ({usage.CachedInputTokenCount ?? 0} cached), {usage.OutputTokenCount} completion tokens");
    }
}
