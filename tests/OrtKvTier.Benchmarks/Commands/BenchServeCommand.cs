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
/// conversation that shares a system prompt with the others, against the server sample one generation at a time
/// (<c>BatchRows=1</c>) and batched, each with the prefix cache and without it (a fresh server and cache for every run):
/// requests per second, time to first token p50/p99 (queueing included), tokens per second per client while answering,
/// the batch sizes reached, failed requests, and 429s (counted apart, retried after Retry-After).
/// </summary>
internal static class BenchServeCommand
{
    public const string Usage =
        "  serve [--model DIR] [--clients 1,8,16,64] [--modes batch1_cache,batch1_no_cache,batched_cache,batched_no_cache] [--batch-rows R]\n" +
        "        [--turns T] [--system-tokens S] [--user-tokens U] [--new-tokens M] [--chart FILE.svg] [--json]\n" +
        "    (default: models/bench, 2 turns, 256-token shared system prompt, 16-token questions, 32 new tokens, 16 rows)";

    private static readonly string[] AllModes = ["batch1_cache", "batch1_no_cache", "batched_cache", "batched_no_cache"];

    private sealed record Measured(string Mode, int Clients, int Requests, int Failed, int Throttled, double Seconds, double TtftP50, double TtftP99, long CachedTokens,
        long OutputTokens, double TokensPerSecondPerClient, int LargestStep, double MeanRowsPerStep, int[] FirstTurnCached)
    {
        public double RequestsPerSecond => Requests / Seconds;

        public override string ToString() =>
            $"{Mode,-16} {Clients,3} clients: {Requests} requests, {RequestsPerSecond:F2}/s, TTFT p50 {TtftP50:F0} ms p99 {TtftP99:F0} ms, " +
            $"{TokensPerSecondPerClient:F1} tokens/s per client, {OutputTokens / Seconds:F1} tokens/s in all, batch largest {LargestStep} mean {MeanRowsPerStep:F2}, " +
            $"{Failed} failed, {Throttled} × 429, {CachedTokens} cached tokens (first turns, in the order they ended: {string.Join(' ', FirstTurnCached)})";
    }

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        var clientCounts = (cl.String("clients") ?? "1,8,16,64").Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray();
        var modes = (cl.String("modes") ?? string.Join(',', AllModes)).Split(',');
        if (modes.FirstOrDefault(m => !AllModes.Contains(m)) is { } unknown) throw new ArgumentException($"--modes: '{unknown}' is not one of {string.Join(", ", AllModes)}.");
        int turns = cl.Int("turns", 2, 1), systemTokens = cl.Int("system-tokens", 256, 1), userTokens = cl.Int("user-tokens", 16, 1), newTokens = cl.Int("new-tokens", 32, 1);
        int batchRows = cl.Int("batch-rows", 16, 2);
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
            foreach (var mode in modes)
            {
                var dir = Path.Combine(Path.GetTempPath(), "ortkv-bench-serve-" + Guid.NewGuid().ToString("N")[..8]);
                try
                {
                    using var server = Server.Start(folder, dir, cache: mode.EndsWith("_cache", StringComparison.Ordinal) && !mode.EndsWith("no_cache", StringComparison.Ordinal),
                        rows: mode.StartsWith("batched", StringComparison.Ordinal) ? batchRows : 1);
                    runs.Add(Measure(server, modelId, mode, clients, turns, system, questions, newTokens));
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
                    w.WriteNumber("output_tokens", r.OutputTokens);
                    w.WriteNumber("tokens_per_second_per_client", Math.Round(r.TokensPerSecondPerClient, 2));
                    w.WriteNumber("tokens_per_second", Math.Round(r.OutputTokens / r.Seconds, 2));
                    w.WriteNumber("batch_largest", r.LargestStep);
                    w.WriteNumber("batch_mean", Math.Round(r.MeanRowsPerStep, 2));
                    w.WriteStartArray("first_turn_cached_tokens");
                    foreach (int c in r.FirstTurnCached) w.WriteNumberValue(c);
                    w.WriteEndArray();
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("ratios");
                foreach (int clients in clientCounts)
                {
                    w.WriteStartObject();
                    w.WriteNumber("clients", clients);
                    foreach (var (name, ratio) in Ratios(runs, clients)) w.WriteNumber(name, Math.Round(ratio, 2));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            foreach (var r in runs) System.Console.WriteLine(r);
            foreach (int clients in clientCounts)
                System.Console.WriteLine($"{clients,3} clients: " + string.Join(", ", Ratios(runs, clients).Select(p => $"{p.Name} {p.Ratio:F2}")));
        }
        return runs.Any(r => r.Failed > 0) ? 1 : 0;
    }

    /// <summary>The side-by-side figures of one client count, where both runs of a ratio were measured.</summary>
    private static IEnumerable<(string Name, double Ratio)> Ratios(List<Measured> runs, int clients)
    {
        Measured? Run(string mode) => runs.LastOrDefault(r => r.Clients == clients && r.Mode == mode);
        if (Run("batched_cache") is { } batched && Run("batch1_cache") is { } single)
        {
            yield return ("requests_per_second_batched_over_batch1_cache", batched.RequestsPerSecond / single.RequestsPerSecond);
            yield return ("ttft_p50_batched_over_batch1_cache", batched.TtftP50 / single.TtftP50);
            yield return ("tokens_per_second_per_client_batched_over_batch1_cache", batched.TokensPerSecondPerClient / single.TokensPerSecondPerClient);
        }
        if (Run("batched_no_cache") is { } batchedCold && Run("batch1_no_cache") is { } singleCold)
            yield return ("requests_per_second_batched_over_batch1_no_cache", batchedCold.RequestsPerSecond / singleCold.RequestsPerSecond);
        if (Run("batched_no_cache") is { } cold && Run("batched_cache") is { } warm)
            yield return ("ttft_p50_no_cache_over_cache_batched", cold.TtftP50 / warm.TtftP50);
    }

    private static Measured Measure(Server server, string modelId, string mode, int clients, int turns, string system, string[] questions, int newTokens)
    {
        var ttfts = new List<double>();
        var decodeRates = new List<double>();
        var firstTurnCached = new List<int>();
        int failed = 0, throttled = 0, requests = 0;
        long cached = 0, outputTokens = 0;
        var options = new OpenAIClientOptions { Endpoint = server.Endpoint, NetworkTimeout = TimeSpan.FromMinutes(10), RetryPolicy = new ClientRetryPolicy(maxRetries: 0) };
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
                    int pieces = 0;
                    try
                    {
                        foreach (var update in chat.CompleteChatStreaming(history, new ChatCompletionOptions { MaxOutputTokenCount = newTokens, Temperature = 0 }))
                        {
                            foreach (var part in update.ContentUpdate)
                            {
                                if (ttft < 0 && part.Text.Length > 0) ttft = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                                answer.Append(part.Text);
                            }
                            if (update.Usage?.InputTokenDetails?.CachedTokenCount is int c2)
                            {
                                Interlocked.Add(ref cached, c2);
                                if (t == 0) lock (firstTurnCached) firstTurnCached.Add(c2);
                            }
                            if (update.Usage?.OutputTokenCount is int output)
                            {
                                Interlocked.Add(ref outputTokens, output);
                                pieces = output;
                            }
                        }
                        double total = Stopwatch.GetElapsedTime(started).TotalMilliseconds;
                        lock (ttfts)
                        {
                            ttfts.Add(ttft < 0 ? total : ttft);
                            // Tokens after the first over the time they took: how fast an answer streams once it started.
                            if (pieces > 1 && ttft >= 0 && total > ttft) decodeRates.Add((pieces - 1) / ((total - ttft) / 1000));
                        }
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
        double seconds = clock.Elapsed.TotalSeconds;
        var sorted = ttfts.Order().ToArray();
        double Percentile(double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(p * sorted.Length) - 1)];
        var rates = decodeRates.Order().ToArray();
        var (largest, mean) = server.BatchReached();
        return new Measured(mode, clients, requests, failed, throttled, seconds, Percentile(0.5), Percentile(0.99), cached,
            outputTokens, rates.Length == 0 ? 0 : rates[rates.Length / 2], largest, mean, [.. firstTurnCached]);
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
                string color = r.Mode switch { "batched_cache" => "#1f77b4", "batch1_cache" => "#aec7e8", "batched_no_cache" => "#d62728", _ => "#ff9896" };
                svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{x}\" y=\"{height - bottom - h:F1}\" width=\"{bar}\" height=\"{h:F1}\" fill=\"{color}\"/>");
                svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x + bar / 2}\" y=\"{height - bottom - h - 6:F1}\" text-anchor=\"middle\">{r.TtftP50:F0} ms</text>");
                x += bar + 8;
            }
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{x - bar - 12}\" y=\"{height - bottom + 18}\" text-anchor=\"middle\">{group.Key} clients</text>");
            x += 60;
        }
        int legend = top;
        foreach (var (mode, color) in new[] { ("batched_cache", "#1f77b4"), ("batch1_cache", "#aec7e8"), ("batched_no_cache", "#d62728"), ("batch1_no_cache", "#ff9896") })
        {
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{width - 170}\" y=\"{legend}\" width=\"14\" height=\"10\" fill=\"{color}\"/><text x=\"{width - 150}\" y=\"{legend + 9}\">{mode.Replace('_', ' ')}</text>");
            legend += 20;
        }
        svg.Append("</svg>");
        return svg.ToString();
    }

    /// <summary>The server sample as a child process on a free loopback port.</summary>
    private sealed class Server : IDisposable
    {
        private readonly Process _process;
        private Server(Process process, Uri endpoint) => (_process, Endpoint) = (process, endpoint);
        public Uri Endpoint { get; }

        public static Server Start(string model, string cacheDir, bool cache, int rows)
        {
            var dll = typeof(BenchServeCommand).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == "ServerDll").Value!;
            int port = BenchModel.FreePort();
            var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { dll, "--urls", $"http://127.0.0.1:{port}", $"--OrtKvTier:ModelFolder={model}", $"--OrtKvTier:CacheDirectory={cacheDir}",
                         $"--OrtKvTier:CacheEnabled={cache}", $"--OrtKvTier:BatchRows={rows}", "--Server:MaxQueued=256", "--Logging:LogLevel:Default=Warning" })
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

        /// <summary>The largest and the mean rows per decode step the server's batch reached (0 without a batch).</summary>
        public (int Largest, double Mean) BatchReached()
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            var health = System.Text.Json.JsonDocument.Parse(http.GetStringAsync(new Uri(Endpoint, "/health")).Result).RootElement;
            if (!health.TryGetProperty("batch", out var batch) || batch.ValueKind != System.Text.Json.JsonValueKind.Object) return (1, 1);
            return (batch.GetProperty("largest_step").GetInt32(), batch.GetProperty("mean_rows_per_step").GetDouble());
        }

        public void Dispose()
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
            _process.Dispose();
        }
    }
}
