using System.ClientModel;
using System.ClientModel.Primitives;
using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Text;
using OpenAI;
using OpenAI.Chat;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench serve</c>: N concurrent clients (the official OpenAI .NET client, streaming), each holding a multi-turn
/// conversation that shares a system prompt with the others, against the server sample with the prefix cache and without
/// it (a fresh server and cache for every run): requests per second, time to first token p50/p99 (queueing included),
/// failed requests, and 429s (counted apart, retried after Retry-After).
/// </summary>
internal static class BenchServeCommand
{
    public const string Usage =
        "  serve [--model DIR] [--clients 16,64] [--turns T] [--system-tokens S] [--user-tokens U] [--new-tokens M] [--chart FILE.svg] [--json]\n" +
        "    (default: models/bench, 2 turns, 256-token shared system prompt, 16-token questions, 8 new tokens)";

    private sealed record Measured(string Mode, int Clients, int Requests, int Failed, int Throttled, double Seconds, double TtftP50, double TtftP99, long CachedTokens)
    {
        public double RequestsPerSecond => Requests / Seconds;
    }

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        var clientCounts = (cl.String("clients") ?? "16,64").Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray();
        int turns = cl.Int("turns", 2, 1), systemTokens = cl.Int("system-tokens", 256, 1), userTokens = cl.Int("user-tokens", 16, 1), newTokens = cl.Int("new-tokens", 8, 1);
        var chart = cl.String("chart");
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        string system, modelId;
        string[] questions;
        using (var tokenizer = new ModelTokenizer(folder))
        {
            system = BenchChatCommand.Text(tokenizer, systemTokens, seed: 1);
            questions = [.. Enumerable.Range(0, clientCounts.Max() * turns).Select(i => BenchChatCommand.Text(tokenizer, userTokens, seed: 100 + i))];
            modelId = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder)));
        }
        var runs = new List<Measured>();
        foreach (int clients in clientCounts)
            foreach (var cache in new[] { true, false })
            {
                var dir = Path.Combine(Path.GetTempPath(), "ortkv-bench-serve-" + Guid.NewGuid().ToString("N")[..8]);
                try
                {
                    using var server = Server.Start(folder, dir, cache);
                    runs.Add(Measure(server.Endpoint, modelId, cache ? "cache" : "no_cache", clients, turns, system, questions, newTokens));
                    System.Console.Error.WriteLine($"{runs[^1]}");
                }
                finally
                {
                    BenchModel.TryDelete(dir);
                }
            }
        if (chart is not null) File.WriteAllText(chart, Svg(runs, $"TTFT p50 with N concurrent clients, {systemTokens}-token shared system prompt, {turns} turns ({modelId}, 2-core CPU)"));
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteNumber("turns", turns);
                w.WriteNumber("system_tokens", systemTokens);
                w.WriteNumber("new_tokens", newTokens);
                w.WriteStartArray("runs");
                foreach (var r in runs)
                {
                    w.WriteStartObject();
                    w.WriteString("mode", r.Mode);
                    w.WriteNumber("clients", r.Clients);
                    w.WriteNumber("requests", r.Requests);
                    w.WriteNumber("failed", r.Failed);
                    w.WriteNumber("throttled_429", r.Throttled);
                    w.WriteNumber("requests_per_second", Math.Round(r.RequestsPerSecond, 3));
                    w.WriteNumber("ttft_p50_ms", Math.Round(r.TtftP50, 1));
                    w.WriteNumber("ttft_p99_ms", Math.Round(r.TtftP99, 1));
                    w.WriteNumber("cached_tokens", r.CachedTokens);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("ttft_p50_no_cache_over_cache");
                foreach (int clients in clientCounts)
                    w.WriteNumberValue(Math.Round(runs.Single(r => r.Clients == clients && r.Mode == "no_cache").TtftP50 / runs.Single(r => r.Clients == clients && r.Mode == "cache").TtftP50, 2));
                w.WriteEndArray();
            });
        else
            foreach (var r in runs)
                System.Console.WriteLine($"{r.Mode,-9} {r.Clients,3} clients: {r.Requests} requests, {r.RequestsPerSecond:F2}/s, TTFT p50 {r.TtftP50:F0} ms p99 {r.TtftP99:F0} ms, {r.Failed} failed, {r.Throttled} × 429, {r.CachedTokens} cached tokens");
        return runs.Any(r => r.Failed > 0) ? 1 : 0;
    }

    private static Measured Measure(Uri endpoint, string modelId, string mode, int clients, int turns, string system, string[] questions, int newTokens)
    {
        var ttfts = new List<double>();
        int failed = 0, throttled = 0, requests = 0;
        long cached = 0;
        var options = new OpenAIClientOptions { Endpoint = endpoint, NetworkTimeout = TimeSpan.FromMinutes(10), RetryPolicy = new ClientRetryPolicy(maxRetries: 0) };
        // One request first, unrelated to the conversations: the server's code is compiled before the clock starts.
        new ChatClient(modelId, new ApiKeyCredential("bench"), options).CompleteChat([new UserChatMessage("warm up")], new ChatCompletionOptions { MaxOutputTokenCount = 2 });
        var clock = Stopwatch.StartNew();
        var conversations = Enumerable.Range(0, clients).Select(c => Task.Run(() =>
        {
            var chat = new ChatClient(modelId, new ApiKeyCredential("bench"), options);
            List<ChatMessage> history = [new SystemChatMessage(system)];
            for (int t = 0; t < turns; t++)
            {
                history.Add(new UserChatMessage(questions[c * turns + t]));
                while (true)
                {
                    var started = Stopwatch.GetTimestamp();
                    double ttft = -1;
                    var answer = new StringBuilder();
                    try
                    {
                        foreach (var update in chat.CompleteChatStreaming(history, new ChatCompletionOptions { MaxOutputTokenCount = newTokens, Temperature = 0 }))
                        {
                            foreach (var part in update.ContentUpdate)
                            {
                                if (ttft < 0 && part.Text.Length > 0) ttft = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                                answer.Append(part.Text);
                            }
                            if (update.Usage?.InputTokenDetails?.CachedTokenCount is int c2) Interlocked.Add(ref cached, c2);
                        }
                        lock (ttfts) ttfts.Add(ttft < 0 ? Stopwatch.GetElapsedTime(started).TotalMilliseconds : ttft);
                        Interlocked.Increment(ref requests);
                        history.Add(new AssistantChatMessage(answer.ToString()));
                        break;
                    }
                    catch (ClientResultException e) when (e.Status == 429)
                    {
                        Interlocked.Increment(ref throttled);
                        Thread.Sleep(TimeSpan.FromSeconds(1));
                    }
                    catch (Exception e) when (e is ClientResultException or IOException or HttpRequestException or TaskCanceledException)
                    {
                        Interlocked.Increment(ref failed);
                        System.Console.Error.WriteLine($"{mode} client {c} turn {t}: {e.Message}");
                        history.RemoveAt(history.Count - 1);
                        return;
                    }
                }
            }
        })).ToArray();
        Task.WaitAll(conversations);
        var sorted = ttfts.Order().ToArray();
        double Percentile(double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(p * sorted.Length) - 1)];
        return new Measured(mode, clients, requests, failed, throttled, clock.Elapsed.TotalSeconds, Percentile(0.5), Percentile(0.99), cached);
    }

    /// <summary>Bars: TTFT p50 per client count, with the cache and without.</summary>
    private static string Svg(List<Measured> runs, string title)
    {
        const int width = 640, height = 360, left = 80, top = 40, bottom = 50, bar = 60;
        double max = runs.Max(r => r.TtftP50) * 1.15;
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\"><rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>");
        svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{left}\" y=\"22\" font-size=\"13\">{System.Security.SecurityElement.Escape(title)}</text>");
        int x = left;
        foreach (var group in runs.GroupBy(r => r.Clients))
        {
            foreach (var r in group)
            {
                double h = r.TtftP50 / max * (height - top - bottom);
                string color = r.Mode == "cache" ? "#1f77b4" : "#d62728";
                svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{x}\" y=\"{height - bottom - h:F1}\" width=\"{bar}\" height=\"{h:F1}\" fill=\"{color}\"/>");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x + bar / 2}\" y=\"{height - bottom - h - 6:F1}\" text-anchor=\"middle\">{r.TtftP50:F0} ms</text>");
                x += bar + 8;
            }
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x - bar - 12}\" y=\"{height - bottom + 18}\" text-anchor=\"middle\">{group.Key} clients</text>");
            x += 60;
        }
        svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{width - 170}\" y=\"{top}\" width=\"14\" height=\"10\" fill=\"#1f77b4\"/><text x=\"{width - 150}\" y=\"{top + 9}\">prefix cache</text>");
        svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{width - 170}\" y=\"{top + 20}\" width=\"14\" height=\"10\" fill=\"#d62728\"/><text x=\"{width - 150}\" y=\"{top + 29}\">no cache</text></svg>");
        return svg.ToString();
    }

    /// <summary>The server sample as a child process on a free loopback port.</summary>
    private sealed class Server : IDisposable
    {
        private readonly Process _process;
        private Server(Process process, Uri endpoint) => (_process, Endpoint) = (process, endpoint);
        public Uri Endpoint { get; }

        public static Server Start(string model, string cacheDir, bool cache)
        {
            var dll = typeof(BenchServeCommand).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "ServerDll").Value!;
            int port = BenchModel.FreePort();
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { dll, "--urls", $"http://127.0.0.1:{port}", $"--OrtKvTier:ModelFolder={model}", $"--OrtKvTier:CacheDirectory={cacheDir}",
                         $"--OrtKvTier:CacheEnabled={cache}", "--Server:MaxQueued=256", "--Logging:LogLevel:Default=Warning" })
                info.ArgumentList.Add(a);
            var process = Process.Start(info)!;
            process.OutputDataReceived += (_, _) => { };
            process.ErrorDataReceived += (_, _) => { };
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
            for (var clock = Stopwatch.StartNew(); clock.Elapsed < TimeSpan.FromMinutes(2); Thread.Sleep(100))
            {
                if (process.HasExited) throw new InvalidOperationException($"The server exited with {process.ExitCode}.");
                try
                {
                    if (http.GetAsync($"http://127.0.0.1:{port}/health").Result.IsSuccessStatusCode) return new Server(process, new Uri($"http://127.0.0.1:{port}/v1"));
                }
                catch (AggregateException) { }
            }
            process.Kill(entireProcessTree: true);
            throw new TimeoutException("The server did not answer /health within 2 minutes.");
        }

        public void Dispose()
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
            _process.Dispose();
        }
    }
}
