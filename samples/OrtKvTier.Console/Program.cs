using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using OrtKvTier.Model;

const string usage = "usage: ortkv <command> [options]   (--verbose shows stack traces)\n\n" +
    GenerateCommand.Usage + "\n" + ChatCommand.ChatUsage + "\n" + ChatCommand.WarmUsage + "\n" + CacheCommand.Usage + "\n" + BuildModelCommand.Usage + "\n";

var verbose = args.Contains("--verbose");
var rest = args.Where(a => a != "--verbose").ToArray();
if (rest.Length == 0 || rest[0] is "-h" or "--help" or "help")
{
    Console.Write(usage);
    return rest.Length == 0 ? 2 : 0;
}

try
{
    var options = rest.Skip(1);
    return rest[0] switch
    {
        "generate" => GenerateCommand.Run(new CommandLine(options, new HashSet<string>(["json", "sample", .. CacheOptions.Flags]))),
        "chat" => ChatCommand.Chat(new CommandLine(options, new HashSet<string>(CacheOptions.Flags))),
        "warm" => ChatCommand.Warm(new CommandLine(options, new HashSet<string>(CacheOptions.Flags))),
        "build-model" => BuildModelCommand.Run(new CommandLine(options, new HashSet<string>())),
        "cache" when rest.Length > 1 => CacheCommand.Run(rest[1], new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "cache" => throw new UsageException($"cache needs a subcommand (list, stats, verify, prune, clear).\n{usage}"),
        "bench" => throw new UsageException("The benchmarks are a project of their own: dotnet run -c Release --project tests/OrtKvTier.Benchmarks -- ttft (see the README)."),
        _ => throw new UsageException($"Unknown command '{rest[0]}'.\n{usage}"),
    };
}
catch (Exception e) when (!verbose && e is UsageException or ModelFolderException or ArgumentException or InvalidOperationException or IOException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return e is UsageException ? 2 : 1;
}
catch (Exception e) when (!verbose)
{
    Console.Error.WriteLine($"error: {e.GetType().Name}: {e.Message}");
    return 1;
}
