using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using OrtKvTier.Model;

const string usage = "usage: ortkv <command> [options]   (--verbose shows stack traces)\n\n" +
    GenerateCommand.Usage + "\n" + ChatCommand.ChatUsage + "\n" + ChatCommand.WarmUsage + "\n" + CacheCommand.Usage + "\n" + BenchDiskCommand.Usage + "\n" + BenchTtftCommand.Usage + "\n" + BenchChunksCommand.Usage + "\n" + BenchChatCommand.Usage + "\n" + BenchRemoteCommand.Usage + "\n" + BenchCaptureCommand.Usage + "\n" + BuildModelCommand.Usage + "\n";

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
        "bench" when rest.Length > 1 && rest[1] == "disk" => BenchDiskCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "bench" when rest.Length > 1 && rest[1] == "remote" => BenchRemoteCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "bench" when rest.Length > 1 && rest[1] == "chat" => BenchChatCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "bench" when rest.Length > 1 && rest[1] == "chunks" => BenchChunksCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "bench" when rest.Length > 1 && rest[1] == "capture" => BenchCaptureCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "bench" when rest.Length > 1 && rest[1] == "ttft" => BenchTtftCommand.Run(new CommandLine(rest.Skip(2), new HashSet<string> { "json" })),
        "cache" or "bench" => throw new UsageException($"{rest[0]} needs a subcommand.\n{usage}"),
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
