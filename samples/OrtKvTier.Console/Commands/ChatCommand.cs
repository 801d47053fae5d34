using System.Globalization;
using Microsoft.Extensions.AI;
using OrtKvTier.Cache;
using OrtKvTier.Chat;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using Spectre.Console;

namespace OrtKvTier.Console.Commands;

/// <summary>
/// <c>chat</c>: an interactive conversation through <see cref="KvChatClient"/>, streaming each answer
/// and showing its time to first token and how much of the prompt came from the cache.
/// <c>warm</c>: prefills a long document (as the system prompt) into the cache, with a progress bar.
/// </summary>
internal static class ChatCommand
{

    public static int Chat(CommandLine cl)
    {
        var modelDir = cl.String("model") ?? RepoPaths.DefaultModel;
        var system = cl.String("system-file") is { } systemFile ? File.ReadAllText(systemFile) : cl.String("system");
        int maxNew = cl.Int("max-new-tokens", 128, min: 1);
        var temperature = cl.Double("temperature");
        var seedText = cl.String("seed");
        var cacheOptions = CacheOptions.Read(cl);
        cl.RejectUnknown();

        using var model = KvModel.Load(modelDir);
        using var tokenizer = new ModelTokenizer(model.Folder);
        using var cache = cacheOptions.Open(model);
        var client = model.AsChatClient(tokenizer, cache, new KvChatClientOptions { Tenant = cacheOptions.Tenant });
        var options = new ChatOptions
        {
            MaxOutputTokens = maxNew, Temperature = (float?)temperature,
            Seed = seedText is null ? null : long.Parse(seedText, CultureInfo.InvariantCulture),
        };
        var history = NewHistory(system);
        AnsiConsole.MarkupLine($"[grey]{Markup.Escape(model.Folder)} · {model.Layout.ShapeKey} · cache {(cache?.DiskDirectory is { } d ? Markup.Escape(d) : cache is null ? "off" : "memory")}[/]");

        while (true)
        {
            AnsiConsole.Markup("[bold green]you>[/] ");
            var line = System.Console.ReadLine();
            if (line is null || line.Trim() == "/exit") break;
            if (line.Trim() == "/reset")
            {
                history = NewHistory(system);
                AnsiConsole.MarkupLine("[grey](conversation reset)[/]");
                continue;
            }
            if (line.Trim().Length == 0) continue;
            history.Add(new ChatMessage(ChatRole.User, line));
            AnsiConsole.Markup("[bold blue]assistant>[/] ");
            var answer = new System.Text.StringBuilder();
            UsageDetails? usage = null;
            AdditionalPropertiesDictionary? details = null;
            try
            {
                foreach (var update in client.GetStreamingResponseAsync(history, options).ToBlockingEnumerable())
                {
                    System.Console.Write(update.Text);
                    answer.Append(update.Text);
                    usage ??= update.Contents.OfType<UsageContent>().FirstOrDefault()?.Details;
                    details ??= update.AdditionalProperties;
                }
            }
            catch (ArgumentException e)
            {
                history.RemoveAt(history.Count - 1);
                AnsiConsole.MarkupLine($"\n[red]{Markup.Escape(e.Message)}[/] [grey](try /reset)[/]");
                continue;
            }
            System.Console.WriteLine();
            history.Add(new ChatMessage(ChatRole.Assistant, answer.ToString()));
            AnsiConsole.MarkupLine($"[grey]{Markup.Escape(TurnSummary(usage, details))}[/]");
        }
        return 0;
    }

    public static int Warm(CommandLine cl)
    {
        var modelDir = cl.String("model") ?? RepoPaths.DefaultModel;
        var file = cl.String("file") ?? throw new UsageException("warm needs --file FILE.");
        int piece = cl.Int("piece-tokens", 256, min: 1);
        var cacheOptions = CacheOptions.Read(cl);
        cl.RejectUnknown();
        if (!cacheOptions.Enabled) throw new UsageException("warm fills the cache; --no-cache makes it pointless.");
        var system = File.ReadAllText(file);

        using var model = KvModel.Load(modelDir);
        using var tokenizer = new ModelTokenizer(model.Folder);
        using var cache = cacheOptions.Open(model)!;
        var tokens = model.AsChatClient(tokenizer, cache).PromptTokens(NewHistory(system));
        if (tokens.Length > model.Layout.MaxLength)
            throw new UsageException($"{file} is {tokens.Length} tokens as a system prompt; the model takes {model.Layout.MaxLength}.");
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model), cache, cacheOptions.Tenant);
        int restored = 0;
        AnsiConsole.Progress().Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(context =>
            {
                var task = context.AddTask($"prefill {tokens.Length} tokens", maxValue: tokens.Length);
                for (int start = 0; start < tokens.Length; start += piece)
                {
                    generator.AppendTokens(tokens.AsSpan(start, Math.Min(piece, tokens.Length - start)));
                    if (start == 0) restored = generator.LastRestore.RestoredTokens;
                    task.Value = Math.Min(tokens.Length, start + piece);
                }
            });
        generator.CaptureToCache();
        cache.Flush();
        AnsiConsole.MarkupLine($"warmed [bold]{tokens.Length}[/] tokens ({restored} were cached already) into {Markup.Escape(cache.DiskDirectory ?? "memory")}; " +
            $"[grey]chat --system-file {Markup.Escape(file)}[/] now starts from them");
        return 0;
    }

    private static List<ChatMessage> NewHistory(string? system) => system is null ? [] : [new ChatMessage(ChatRole.System, system)];

    private static string TurnSummary(UsageDetails? usage, AdditionalPropertiesDictionary? details)
    {
        if (usage is null || details is null) return "";
        var tiers = details.TryGetValue("tokens_by_tier", out var t) && t is IReadOnlyDictionary<string, int> byTier && byTier.Count > 0
            ? " (" + string.Join(", ", byTier.Select(x => $"{x.Key} {x.Value}")) + ")" : "";
        var computed = details.TryGetValue("computed_instead", out var why) && why is string reason ? $" · {details["found_tokens"]} found, computed instead: {reason}" : "";
        return $"[TTFT {(double)details["ttft_ms"]!:F1} ms · {usage.CachedInputTokenCount}/{usage.InputTokenCount} prompt tokens cached{tiers} · {usage.OutputTokenCount} tokens{computed}]";
    }
}
