using System.CommandLine;
using System.CommandLine.Parsing;
using OrtKvTier.Cache;
using OrtKvTier.Console.Commands;

namespace OrtKvTier.Console;

/// <summary>
/// The console's commands on System.CommandLine: help with descriptions and defaults for every command (<c>-h</c>,
/// <c>--help</c>), <c>--version</c>, typed options with clear errors (numbers in range, sizes with binary and decimal
/// suffixes, durations, files that must exist, one of a set of values). A command runs only once its arguments are
/// valid; it then reads them through <see cref="CommandLine"/>, built from the same parse result.
/// </summary>
internal static class ConsoleCli
{
    /// <summary>Show stack traces and debug logging.</summary>
    public static readonly Option<bool> Verbose = new("--verbose") { Description = "Show stack traces and the library's debug log on stderr.", Recursive = true };

    public static RootCommand Build(Func<string, ParseResult, int> run)
    {
        var root = new RootCommand("ortkv: generation and chat with OrtKvTier's tiered prefix cache, on the shipped model or any GenAI folder.");
        root.Options.Add(Verbose);
        root.Subcommands.Add(Command("generate", "Generate text for a prompt; a second run restores the prompt's prefix from the cache.", run,
        [
            Model(),
            new Option<string>("--prompt") { Description = "The prompt text." },
            new Option<FileInfo>("--prompt-file") { Description = "A file whose text is the prompt." }.AcceptExistingOnly(),
            TokenList("--tokens", "The prompt as token ids, comma-separated."),
            Int("--max-new-tokens", "Most tokens to generate.", 32, 1, 1_000_000),
            new Option<bool>("--sample") { Description = "Sample (top-k/top-p/temperature) instead of greedy search." },
            Double("--temperature", "Sampling temperature (0: greedy).", 0, 100),
            Int("--top-k", "Sample from the k most likely tokens (1: greedy).", null, 1, 1_000_000),
            Double("--top-p", "Sample from the smallest set of tokens whose probability reaches p.", 0, 1),
            Long("--seed", "Random seed for sampling."),
            OneOf("--shared-buffer", "Override the model's past_present_share_buffer.", "true", "false"),
            OneOf("--device", "Where the model runs (default cpu).", "cpu", "cuda"),
            new Option<bool>("--json") { Description = "Print one JSON object (tokens, text, cache details and warnings)." },
            .. CacheOptions(),
        ]));
        root.Subcommands.Add(Command("chat", "Chat in the terminal; each turn restores the conversation so far from the cache (/reset, /exit).", run,
        [
            Model(),
            new Option<string>("--system") { Description = "The system prompt text." },
            new Option<FileInfo>("--system-file") { Description = "A file whose text is the system prompt (for example one `warm` prefilled)." }.AcceptExistingOnly(),
            Int("--max-new-tokens", "Most tokens per answer.", 128, 1, 1_000_000),
            Double("--temperature", "Sampling temperature (0: greedy).", 0, 100),
            Long("--seed", "Random seed for sampling."),
            .. CacheOptions(),
        ]));
        root.Subcommands.Add(Command("warm", "Prefill a document as the system prompt into the cache, with a progress bar; `chat --system-file FILE` then starts from it.", run,
        [
            new Option<FileInfo>("--file") { Description = "The document.", Required = true }.AcceptExistingOnly(),
            Model(),
            Int("--piece-tokens", "Tokens prefilled (and captured) per step.", 256, 1, 1_000_000),
            .. CacheOptions(),
        ]));
        root.Subcommands.Add(Command("rag", "Answer questions from a file of documents (paragraphs): each question retrieves the documents sharing most words with it; documents seen before come from the cache wherever they stood.", run,
        [
            new Option<FileInfo>("--documents") { Description = "The documents: paragraphs separated by blank lines.", Required = true }.AcceptExistingOnly(),
            new Option<string>("--question") { Description = "One question." },
            new Option<FileInfo>("--questions-file") { Description = "Questions, one per line." }.AcceptExistingOnly(),
            Int("--top", "Documents retrieved per question.", 3, 1, 100),
            Int("--max-new-tokens", "Most tokens per answer.", 48, 1, 1_000_000),
            Model(),
            new Option<bool>("--json") { Description = "Print one JSON object with every answer and where its documents came from." },
            .. CacheOptions(),
        ]));
        var cache = new Command("cache", "See and manage the disk cache's pools.");
        foreach (var (name, description) in new[]
                 {
                     ("list", "Pools by model and last use, with their size."), ("stats", "Entries, sizes and counters of each pool."),
                     ("verify", "Read and check every entry (exit code 3 when damage was found and dropped)."),
                     ("prune", "Delete whole pools not used for a while, all but the most recent, or those another format version or key wrote."),
                     ("clear", "Empty the pools and give their disk space back."),
                 })
        {
            List<Option> options = [CacheDirectory(), new Option<bool>("--json") { Description = "Print JSON." }];
            if (name == "prune")
                options.AddRange([Duration("--older-than", "Delete pools not used for this long (e.g. 30d, 12h)."), Int("--keep", "Keep the N most recently used pools.", null, 0, 1_000_000),
                    new Option<bool>("--other-versions") { Description = "Delete pools written in another format version (this build cannot read them)." },
                    new Option<bool>("--other-keys") { Description = "Delete pools written under another key than this process's (it cannot read them)." }]);
            cache.Subcommands.Add(Command(name, description, run, options));
        }
        root.Subcommands.Add(cache);
        root.Subcommands.Add(Command("build-model", "Write a GenAI model folder with random weights (real architecture) for tests and benchmarks.", run,
        [
            new Option<string>("--out") { Description = "The folder to write.", Required = true },
            OneOf("--preset", "A shape to start from.", "tiny", "tiny-fp16", "bench"),
            Int("--layers", "Decoder layers.", null, 1, 1024), Int("--hidden", "Hidden size.", null, 1, 1 << 20), Int("--heads", "Attention heads.", null, 1, 4096),
            Int("--kv-heads", "Key/value heads.", null, 1, 4096), Int("--head-size", "Head size.", null, 1, 4096), Int("--intermediate", "MLP size.", null, 1, 1 << 22),
            Int("--vocab", "Vocabulary size.", null, 1, 1 << 24), Int("--max-length", "Longest sequence.", null, 2, 1 << 24),
            OneOf("--dtype", "Weight and KV element type.", "fp32", "fp16"), OneOf("--shared-buffer", "past_present_share_buffer.", "true", "false"),
            Int("--seed", "Weights' random seed.", null, int.MinValue, int.MaxValue), OneOf("--rotary", "Where rotary embedding runs.", "attention", "position-ids"),
            new Option<string>("--external-data") { Description = "Write the weights to this external-data file name." },
        ]));
        return root;
    }

    /// <summary>A command whose action runs <paramref name="run"/> with its path (e.g. "cache stats") once the arguments parsed.</summary>
    private static Command Command(string name, string description, Func<string, ParseResult, int> run, IEnumerable<Option> options)
    {
        var command = new Command(name, description);
        foreach (var option in options)
        {
            if (option is Option<string> text) RefuseOptionAsValue(text);
            command.Options.Add(option);
        }
        command.SetAction(result => run(Path(result.CommandResult), result));
        return command;
    }

    /// <summary>`--prompt --json` is a missing prompt, not the prompt "--json".</summary>
    private static void RefuseOptionAsValue(Option<string> option) => option.Validators.Add(result =>
    {
        if (result.Tokens.Count > 0 && result.Tokens[0].Value.StartsWith("--", StringComparison.Ordinal))
            result.AddError($"{option.Name} needs a value; got the option '{result.Tokens[0].Value}'. (A value that starts with -- goes in a file: --prompt-file, --system-file.)");
    });

    /// <summary>The command's words after <c>ortkv</c> (<c>cache prune</c>).</summary>
    public static string Path(CommandResult result) =>
        result.Parent is CommandResult { Command: not RootCommand } parent ? Path(parent) + " " + result.Command.Name : result.Command.Name;

    private static IEnumerable<Option> CacheOptions()
    {
        var defaults = new PrefixCacheOptions();
        return
        [
            CacheDirectory(),
            new Option<bool>("--no-cache") { Description = "Run without the prefix cache." },
            Int("--chunk-tokens", "Tokens per cached chunk.", defaults.ChunkTokens, 1, 65536),
            Size("--cache-size", "The disk pool's capacity (its file grows on demand up to it; an existing pool is resized).", "1GiB"),
            Size("--host-cache-size", "Host memory for cached chunks.", "1GiB"),
            Size("--device-cache-size", "Device memory for the device tier on CUDA (0: off).", "0", allowZero: true),
            new Option<string>("--salt") { Description = "Mixed into every key: caches with different salts share nothing." },
            new Option<string>("--tenant") { Description = "This run's tenant: it hits only its own entries." },
            new Option<bool>("--encrypt") { Description = "Encrypt chunks written to disk (payload and token ids)." },
            new Option<bool>("--share-with-group") { Description = "Share the cache directory with its group on purpose (0770/0660)." },
            new Option<bool>("--always-restore") { Description = "Restore every prefix found, even when computing it is expected to be faster (measuring the restore path)." },
            OneOf("--disk-encoding", "How the disk stores KV (default exact; int8 halves fp16 bytes once the model passes the quality gate).", "exact", "int8", "int4"),
            new Option<string>("--remote") { Description = "A Redis server or cluster: redis://HOST:PORT, HOST:PORT, or nodes comma-separated." },
            OneOf("--remote-admission", "Which chunks are uploaded (default seen-twice).", "always", "seen-twice"),
            new Option<string>("--remote-namespace") { Description = "The remote tier's key prefix (default ortkv)." },
            Duration("--remote-ttl", "How long a remote entry lives after its last hit (default 1d)."),
            Duration("--remote-timeout", "Time allowed for one remote operation (default 250ms)."),
            OneOf("--remote-encoding", "How remote values store KV (default exact; int8 halves fp16 bytes once the model passes the quality gate).", "exact", "int8", "int4"),
        ];
    }

    private static Option<string> Model() => new("--model") { Description = "The GenAI model folder (default: the repository's models/tiny)." };

    private static Option<string> CacheDirectory() => new("--cache-dir")
    {
        Description = "The disk cache's root directory (default: $ORTKV_CACHE_DIR, else $XDG_CACHE_HOME/ortkvtier, else ~/.cache/ortkvtier).",
    };

    private static Option<string> Int(string name, string description, int? fallback, int min, int max) => Validated(name, description, fallback?.ToString(),
        text => int.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var n) && n >= min && n <= max
            ? null : $"{name} expects a whole number from {min} to {max}; got '{text}'.");

    private static Option<string> Long(string name, string description) => Validated(name, description, null,
        text => long.TryParse(text, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out _) ? null : $"{name} expects a whole number; got '{text}'.");

    private static Option<string> Double(string name, string description, double min, double max) => Validated(name, description, null,
        text => double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) && d >= min && d <= max
            ? null : $"{name} expects a number from {min} to {max}; got '{text}'.");

    private static Option<string> Size(string name, string description, string fallback, bool allowZero = false) => Validated(name, description, fallback,
        text => OrtKvTier.Console.CommandLine.ParseSize(text, allowZero) is not null ? null : OrtKvTier.Console.CommandLine.SizeError(name, text, allowZero));

    private static Option<string> Duration(string name, string description) => Validated(name, description, null, text =>
    {
        try
        {
            Commands.CacheOptions.Duration(name.TrimStart('-'), text);
            return null;
        }
        catch (UsageException e)
        {
            return e.Message;
        }
    });

    private static Option<string> TokenList(string name, string description) => Validated(name, description, null,
        text => text.Split(',').All(t => int.TryParse(t, out var id) && id >= 0) ? null : $"{name} expects token ids (whole numbers ≥ 0) separated by commas; got '{text}'.");

    private static Option<string> OneOf(string name, string description, params string[] values)
    {
        var option = new Option<string>(name) { Description = description };
        option.AcceptOnlyFromAmong(values);
        return option;
    }

    /// <summary>A string option whose value <paramref name="check"/> accepts (null) or refuses (the error); the default shows in help.</summary>
    private static Option<string> Validated(string name, string description, string? fallback, Func<string, string?> check)
    {
        var option = new Option<string>(name) { Description = description };
        if (fallback is not null) option.DefaultValueFactory = _ => fallback;
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count > 0 && check(result.Tokens[0].Value) is { } error) result.AddError(error);
        });
        return option;
    }
}
