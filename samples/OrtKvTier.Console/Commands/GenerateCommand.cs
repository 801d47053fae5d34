using System.Globalization;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Console.Commands;

/// <summary><c>generate</c>: run a prompt through the generation loop and print the text or JSON.</summary>
internal static class GenerateCommand
{
    public static int Run(CommandLine cl)
    {
        var modelDir = cl.String("model") ?? RepoPaths.DefaultModel;
        var prompt = cl.String("prompt");
        var promptFile = cl.String("prompt-file");
        var tokenList = cl.String("tokens");
        int maxNew = cl.Int("max-new-tokens", 32, min: 1);
        bool json = cl.Flag("json");
        bool sample = cl.Flag("sample");
        var temperature = cl.Double("temperature");
        var topP = cl.Double("top-p");
        var topKText = cl.String("top-k");
        var seed = cl.Seed("seed");
        var sharedText = cl.String("shared-buffer");
        var device = (cl.String("device") ?? "cpu") switch
        {
            "cpu" => ExecutionDevice.Cpu,
            "cuda" => ExecutionDevice.Cuda,
            var d => throw new UsageException($"--device expects cpu or cuda; got '{d}'."),
        };
        var cacheOptions = CacheOptions.Read(cl);
        cl.RejectUnknown();
        if (new[] { prompt, promptFile, tokenList }.Count(x => x is not null) != 1)
            throw new UsageException("Give exactly one of --prompt, --prompt-file, --tokens.");

        using var model = KvModel.Load(modelDir, new KvModelOptions { SharedBuffer = sharedText is null ? null : ParseBool("shared-buffer", sharedText), Device = device });
        if (model.DeviceNote is not null) System.Console.Error.WriteLine($"note: {model.DeviceNote}");
        using var tokenizer = new ModelTokenizer(model.Folder);
        int[] promptTokens = tokenList is not null ? ParseTokens(tokenList)
            : tokenizer.Encode(prompt ?? ReadPromptFile(promptFile!));
        if (promptTokens.Length == 0) throw new UsageException("The prompt is empty.");

        var search = SearchOptions.FromConfig(model);
        search = search with
        {
            // Temperature 0 or top-p 0 is greedy, as --help says.
            DoSample = (sample || search.DoSample) && temperature is not 0 && topP is not 0,
            Temperature = temperature is > 0 ? temperature.Value : search.Temperature,
            TopP = topP is > 0 ? topP.Value : search.TopP,
            TopK = topKText is null ? search.TopK : int.Parse(topKText, CultureInfo.InvariantCulture),
            Seed = seed,
        };
        if (promptTokens.Length >= search.MaxLength)
            throw new UsageException($"The prompt is {promptTokens.Length} tokens; this model takes {search.MaxLength} in all, the new tokens included. Shorten the prompt.");
        using var cache = cacheOptions.Open(model);
        var result = new TextGenerator(model, tokenizer, cache, cacheOptions.Tenant).Generate(promptTokens, maxNew, search,
            json ? null : piece => System.Console.Out.Write(piece));

        cache?.Flush(); // the chunks reached every tier (or the faults that stopped them are in the warnings)
        if (json) WriteJson(result, model, cache);
        else System.Console.Error.WriteLine($"\n[{result.Tokens.Length} tokens, prompt {result.PromptTokens} ({result.CachedTokens} cached{TierText(result.Restore)}), " +
            $"TTFT {result.TtftMs:F1} ms, total {result.TotalMs:F1} ms, {result.StopReason}]");
        return 0;
    }

    private static string TierText(PrefixRestoreReport restore) =>
        restore.ComputedInstead is { } why ? $"; {restore.FoundTokens} found and computed instead: {why}"
        : restore.RestoredTokens == 0 ? "" : ": " + string.Join(", ", restore.TokensByTier.Select(t => $"{t.Value} {t.Key}"));

    private static void WriteJson(GenerationResult result, KvModel model, PrefixCache? cache) => JsonOutput.Write(w =>
    {
        w.WriteStartArray("tokens");
        foreach (var t in result.Tokens) w.WriteNumberValue(t);
        w.WriteEndArray();
        w.WriteString("text", result.Text);
        w.WriteNumber("prompt_tokens", result.PromptTokens);
        w.WriteNumber("ttft_ms", Math.Round(result.TtftMs, 3));
        w.WriteNumber("total_ms", Math.Round(result.TotalMs, 3));
        w.WriteString("stop_reason", result.StopReason.ToString());
        w.WriteString("model", model.Folder);
        w.WriteString("fingerprint", model.Fingerprint.ToString());
        w.WriteString("device", model.Device.ToString().ToLowerInvariant());
        w.WriteNumber("cached_tokens", result.CachedTokens);
        w.WriteNumber("prefill_tokens", result.PrefillTokens);
        w.WriteStartObject("cache");
        w.WriteBoolean("enabled", cache is not null);
        if (cache is not null)
        {
            if (cache.DiskDirectory is { } directory) w.WriteString("directory", directory);
            w.WriteNumber("chunk_tokens", cache.ChunkTokens);
            w.WriteString("disk_encoding", cache.DiskEncoding.ToString().ToLowerInvariant());
            if (cache.DiskEncodingQuality is { } quality)
            {
                w.WriteStartObject("disk_encoding_quality");
                w.WriteString("encoding", quality.Encoding.ToString().ToLowerInvariant());
                w.WriteNumber("positions", quality.Positions);
                w.WriteNumber("top1_agreement", quality.Top1Agreement);
                w.WriteNumber("mean_kl", quality.MeanKl);
                w.WriteEndObject();
            }
        }
        w.WriteStartArray("warnings");
        foreach (var warning in cache?.Warnings ?? []) w.WriteStringValue(warning);
        w.WriteEndArray();
        w.WriteStartObject("tokens_by_tier");
        foreach (var (tier, tokens) in result.Restore.TokensByTier) w.WriteNumber(tier, tokens);
        w.WriteEndObject();
        w.WriteStartObject("encoding_by_tier");
        foreach (var (tier, encoding) in result.Restore.EncodingByTier) w.WriteString(tier, encoding);
        w.WriteEndObject();
        w.WriteStartArray("chunk_tiers");
        foreach (var tier in result.Restore.ChunkTiers) w.WriteStringValue(tier);
        w.WriteEndArray();
        w.WriteNumber("found_tokens", result.Restore.FoundTokens);
        if (result.Restore.ComputedInstead is { } why) w.WriteString("computed_instead", why);
        w.WriteNumber("lookup_ms", Math.Round(result.Restore.LookupMs, 3));
        w.WriteNumber("restore_ms", Math.Round(result.Restore.RestoreMs, 3));
        w.WriteNumber("prefill_ms", Math.Round(result.PrefillMs, 3));
        w.WriteNumber("captured_chunks", result.CapturedChunks);
        w.WriteEndObject();
    });

    private static string ReadPromptFile(string path) =>
        File.Exists(path) ? File.ReadAllText(path) : throw new UsageException($"--prompt-file: no such file '{path}'.");

    private static int[] ParseTokens(string list)
    {
        try
        {
            return list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
                .Select(t => int.Parse(t, CultureInfo.InvariantCulture)).ToArray();
        }
        catch (FormatException)
        {
            throw new UsageException($"--tokens expects comma-separated integers such as 1,2,3; got '{list}'.");
        }
    }

    internal static bool ParseBool(string name, string text) => text.ToLowerInvariant() switch
    {
        "true" or "1" or "yes" => true,
        "false" or "0" or "no" => false,
        _ => throw new UsageException($"--{name} expects true or false; got '{text}'."),
    };
}
