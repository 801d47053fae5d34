using System.Diagnostics;
using System.Globalization;
using System.Text;
using Microsoft.Extensions.AI;
using Microsoft.ML.OnnxRuntimeGenAI;
using OrtKvTier.Cache;
using OrtKvTier.Chat;
using OrtKvTier.Model;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench chat</c>: a synthetic multi-turn replay (one shared system prompt, each conversation's
/// history growing turn by turn), measuring time to first token per turn with our client and its
/// prefix cache, with our client and no cache, and with GenAI's <c>OnnxRuntimeGenAIChatClient</c>
/// (<c>EnableCaching</c>, one client per conversation) on the same folder; prints the per-turn table
/// and writes an SVG chart.
/// </summary>
internal static class BenchChatCommand
{
    public const string Usage =
        "  chat [--model DIR] [--conversations N] [--turns T] [--system-tokens S] [--user-tokens U] [--new-tokens M]\n" +
        "    [--chart FILE.svg] [--json]   (default: models/bench, 3 conversations × 5 turns, 1024-token system prompt)";

    private static readonly string[] Rows = ["kv_cache", "no_cache", "genai_caching"];
    private static bool _statelessOnly;

    /// <summary>What went wrong with a client's own conversation caching, if anything.</summary>
    private static string? Note;

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        int conversations = cl.Int("conversations", 3, 1);
        int turns = cl.Int("turns", 5, 1);
        int systemTokens = cl.Int("system-tokens", 1024, 1);
        int userTokens = cl.Int("user-tokens", 32, 1);
        int newTokens = cl.Int("new-tokens", 32, 1);
        var chart = cl.String("chart");
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var system = Text(tokenizer, systemTokens, seed: 1);
        var users = Enumerable.Range(0, conversations).Select(c => Enumerable.Range(0, turns).Select(t => Text(tokenizer, userTokens, seed: 100 + c * turns + t)).ToArray()).ToArray();
        var options = new ChatOptions { Temperature = 0, MaxOutputTokens = newTokens };
        var cacheDir = Path.Combine(Path.GetTempPath(), "ortkv-bench-chat-" + Guid.NewGuid().ToString("N")[..8]);
        // ttft[row][turn] over conversations
        var ttft = Rows.ToDictionary(r => r, _ => Enumerable.Range(0, turns).Select(_ => new List<double>()).ToArray());
        var cached = Enumerable.Range(0, turns).Select(_ => new List<long>()).ToArray();
        try
        {
            System.Console.Error.WriteLine($"{conversations} conversations × {turns} turns, system prompt {systemTokens} tokens, {userTokens}-token questions, {newTokens} new tokens, {model.Folder}");
            WarmUp(model.AsChatClient(tokenizer), options);

            using (var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = cacheDir }))
            {
                var client = model.AsChatClient(tokenizer, cache);
                for (int c = 0; c < conversations; c++)
                    Replay(client, system, users[c], options, (t, ms, usage) => { ttft["kv_cache"][t].Add(ms); cached[t].Add(usage?.CachedInputTokenCount ?? 0); }, "kv_cache", c);
            }
            var plain = model.AsChatClient(tokenizer);
            for (int c = 0; c < conversations; c++)
                Replay(plain, system, users[c], options, (t, ms, _) => ttft["no_cache"][t].Add(ms), "no_cache", c);

            using var genAiModel = new Microsoft.ML.OnnxRuntimeGenAI.Model(model.Folder);
            var prompts = model.AsChatClient(tokenizer); // the same chat template for GenAI's client
            for (int c = 0; c < conversations; c++)
            {
                using var genAi = new OnnxRuntimeGenAIChatClient(genAiModel, ownsModel: false, new OnnxRuntimeGenAIChatClientOptions
                {
                    EnableCaching = true,
                    PromptFormatter = (messages, _) => prompts.RenderPrompt(messages),
                });
                if (c == 0) WarmUp(genAi, options);
                Replay(genAi, system, users[c], options, (t, ms, _) => ttft["genai_caching"][t].Add(ms), "genai_caching", c);
            }
        }
        finally
        {
            BenchModel.TryDelete(cacheDir);
        }

        var mean = Rows.ToDictionary(r => r, r => ttft[r].Select(l => l.Average()).ToArray());
        if (chart is not null) File.WriteAllText(chart, Svg(mean, turns, $"TTFT per turn: {conversations} conversations, {systemTokens}-token shared system prompt ({model.Layout.ShapeKey}, 2-core CPU)"));
        if (json) WriteJson(mean, cached, conversations, turns, systemTokens, userTokens, newTokens);
        else
        {
            System.Console.WriteLine($"{"turn",4} {"kv_cache_ms",12} {"cached_tok",10} {"no_cache_ms",12} {"genai_caching_ms",17} {"no_cache/kv",12} {"genai/kv",9}");
            for (int t = 0; t < turns; t++)
                System.Console.WriteLine($"{t + 1,4} {mean["kv_cache"][t],12:F1} {cached[t].Average(),10:F0} {mean["no_cache"][t],12:F1} {mean["genai_caching"][t],17:F1} " +
                    $"{mean["no_cache"][t] / mean["kv_cache"][t],11:F1}x {mean["genai_caching"][t] / mean["kv_cache"][t],8:F1}x");
            if (Note is not null) System.Console.WriteLine($"note: {Note}");
        }
        return 0;
    }

    /// <summary>
    /// Replays one conversation. A client that returns a <see cref="ChatResponseUpdate.ConversationId"/> (GenAI's with
    /// EnableCaching keeps its generator under it) gets only the new message and that id, as it expects; ours gets the whole history.
    /// </summary>
    private static void Replay(IChatClient client, string system, string[] questions, ChatOptions options, Action<int, double, UsageDetails?> record, string row, int conversation)
    {
        var history = new List<ChatMessage> { new(ChatRole.System, system) };
        string? conversationId = null;
        for (int t = 0; t < questions.Length; t++)
        {
            history.Add(new ChatMessage(ChatRole.User, questions[t]));
            var clock = Stopwatch.StartNew();
            double first = -1;
            var answer = new StringBuilder();
            UsageDetails? usage = null;
            var request = conversationId is null ? history : [history[^1]];
            var requestOptions = conversationId is null ? options : options.Clone();
            if (conversationId is not null) requestOptions.ConversationId = conversationId;
            try
            {
                foreach (var update in client.GetStreamingResponseAsync(request, requestOptions).ToBlockingEnumerable())
                {
                    if (first < 0 && update.Text.Length > 0) first = clock.Elapsed.TotalMilliseconds;
                    answer.Append(update.Text);
                    usage ??= update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
                    if (!_statelessOnly) conversationId ??= update.ConversationId;
                }
            }
            catch (Exception e) when (conversationId is not null && e is not OperationCanceledException)
            {
                // GenAI 0.18 fails to continue a cached conversation on these folders (GroupQueryAttention's
                // total_sequence_length is one more than past + new tokens): send the whole history instead.
                Note = $"{row}: continuing conversation {conversationId} failed ({e.Message.Split('\n')[0]}); it gets the whole history each turn instead.";
                System.Console.Error.WriteLine(Note);
                _statelessOnly = true;
                conversationId = null;
                history.RemoveAt(history.Count - 1);
                t--;
                continue;
            }
            history.Add(new ChatMessage(ChatRole.Assistant, answer.ToString()));
            record(t, first < 0 ? clock.Elapsed.TotalMilliseconds : first, usage);
            System.Console.Error.WriteLine($"{row} conversation {conversation + 1} turn {t + 1}: TTFT {(first < 0 ? clock.Elapsed.TotalMilliseconds : first):F1} ms{(usage?.CachedInputTokenCount is long c ? $", {c} cached" : "")}");
        }
    }

    private static void WarmUp(IChatClient client, ChatOptions options) =>
        client.GetResponseAsync([new ChatMessage(ChatRole.User, "warm up")], options).GetAwaiter().GetResult();

    /// <summary>Deterministic words from a small list, about <paramref name="tokens"/> tokens long.</summary>
    internal static string Text(ModelTokenizer tokenizer, int tokens, int seed)
    {
        string[] words = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "manual", "router", "cable", "order", "delivery", "support", "reset", "serial", "number", "policy", "refund", "account"];
        var random = new Random(seed);
        var text = new StringBuilder();
        while (tokenizer.Encode(text.ToString()).Length < tokens)
            for (int i = 0; i < 16; i++) text.Append(words[random.Next(words.Length)]).Append(' ');
        return text.ToString().TrimEnd();
    }

    private static void WriteJson(Dictionary<string, double[]> mean, List<long>[] cached, int conversations, int turns, int systemTokens, int userTokens, int newTokens) =>
        JsonOutput.Write(w =>
        {
            w.WriteNumber("conversations", conversations);
            w.WriteNumber("turns", turns);
            w.WriteNumber("system_tokens", systemTokens);
            w.WriteNumber("user_tokens", userTokens);
            w.WriteNumber("new_tokens", newTokens);
            if (Note is not null) w.WriteString("note", Note);
            w.WriteStartArray("per_turn");
            for (int t = 0; t < turns; t++)
            {
                w.WriteStartObject();
                w.WriteNumber("turn", t + 1);
                foreach (var (row, values) in mean) w.WriteNumber(row + "_ttft_ms", Math.Round(values[t], 2));
                w.WriteNumber("kv_cache_cached_tokens", Math.Round(cached[t].Average(), 1));
                w.WriteEndObject();
            }
            w.WriteEndArray();
        });

    /// <summary>A line chart (log-scale milliseconds) with one line per row.</summary>
    private static string Svg(Dictionary<string, double[]> mean, int turns, string title)
    {
        const int width = 720, height = 400, left = 70, right = 170, top = 40, bottom = 50;
        var colors = new Dictionary<string, string> { ["kv_cache"] = "#1f77b4", ["no_cache"] = "#d62728", ["genai_caching"] = "#2ca02c" };
        var labels = new Dictionary<string, string> { ["kv_cache"] = "OrtKvTier (prefix cache)", ["no_cache"] = "OrtKvTier, no cache", ["genai_caching"] = "GenAI chat client (EnableCaching)" };
        double min = Math.Log10(Math.Max(1, mean.Values.SelectMany(v => v).Min() / 1.5)), max = Math.Log10(mean.Values.SelectMany(v => v).Max() * 1.5);
        double X(int t) => left + (turns == 1 ? 0 : t * (width - left - right) / (double)(turns - 1));
        double Y(double ms) => top + (max - Math.Log10(ms)) / (max - min) * (height - top - bottom);
        var svg = new StringBuilder();
        svg.Append(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">");
        svg.Append(CultureInfo.InvariantCulture, $"<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/><text x=\"{left}\" y=\"22\" font-size=\"14\">{System.Security.SecurityElement.Escape(title)}</text>");
        for (int p = (int)Math.Floor(min); p <= (int)Math.Ceiling(max); p++)
            foreach (var m in new[] { 1.0, 2.0, 5.0 })
            {
                double ms = m * Math.Pow(10, p);
                if (Math.Log10(ms) < min || Math.Log10(ms) > max) continue;
                svg.Append(CultureInfo.InvariantCulture, $"<line x1=\"{left}\" x2=\"{width - right}\" y1=\"{Y(ms):F1}\" y2=\"{Y(ms):F1}\" stroke=\"#ddd\"/><text x=\"{left - 6}\" y=\"{Y(ms) + 4:F1}\" text-anchor=\"end\">{ms:G4} ms</text>");
            }
        for (int t = 0; t < turns; t++)
            svg.Append(CultureInfo.InvariantCulture, $"<text x=\"{X(t):F1}\" y=\"{height - bottom + 18}\" text-anchor=\"middle\">turn {t + 1}</text>");
        int legend = 0;
        foreach (var (row, values) in mean)
        {
            var points = string.Join(' ', values.Select((v, t) => string.Create(CultureInfo.InvariantCulture, $"{X(t):F1},{Y(v):F1}")));
            svg.Append(CultureInfo.InvariantCulture, $"<polyline fill=\"none\" stroke=\"{colors[row]}\" stroke-width=\"2.5\" points=\"{points}\"/>");
            foreach (var (v, t) in values.Select((v, t) => (v, t)))
                svg.Append(CultureInfo.InvariantCulture, $"<circle cx=\"{X(t):F1}\" cy=\"{Y(v):F1}\" r=\"3.5\" fill=\"{colors[row]}\"/>");
            svg.Append(CultureInfo.InvariantCulture, $"<rect x=\"{width - right + 12}\" y=\"{top + legend * 22}\" width=\"14\" height=\"4\" fill=\"{colors[row]}\"/><text x=\"{width - right + 30}\" y=\"{top + legend * 22 + 6}\">{labels[row]}</text>");
            legend++;
        }
        svg.Append("</svg>");
        return svg.ToString();
    }
}
