using System.CommandLine;
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using OrtKvTier.Model;

bool verbose = args.Contains("--verbose");
StderrLogger.Verbose = verbose;
var root = ConsoleCli.Build(path =>
{
    // The arguments were checked against the command's options; its implementation reads them after the command's words.
    var words = path.Split(' ');
    var options = args.Where(a => a != "--verbose").Skip(words.Length);
    return path switch
    {
        "generate" => GenerateCommand.Run(new CommandLine(options, new HashSet<string>(["json", "sample", .. CacheOptions.Flags]))),
        "chat" => ChatCommand.Chat(new CommandLine(options, new HashSet<string>(CacheOptions.Flags))),
        "warm" => ChatCommand.Warm(new CommandLine(options, new HashSet<string>(CacheOptions.Flags))),
        "build-model" => BuildModelCommand.Run(new CommandLine(options, new HashSet<string>())),
        _ when words[0] == "cache" => CacheCommand.Run(words[1], new CommandLine(options, new HashSet<string> { "json", "other-versions" })),
        _ => throw new UsageException($"Unknown command '{path}'."),
    };
});

var parsed = root.Parse(args.Length == 0 ? ["--help"] : args);
if (args.Length == 0)
{
    parsed.Invoke();
    return 2;
}
if (parsed.Errors.Count > 0 && !args.Any(a => a is "-h" or "--help" or "-?"))
{
    foreach (var error in parsed.Errors) Console.Error.WriteLine($"error: {error.Message}");
    Console.Error.WriteLine($"Run 'ortkv {string.Join(' ', parsed.CommandResult.Command.Name == root.Name ? [] : new[] { parsed.CommandResult.Command.Name })} --help' for the options.".Replace("  ", " "));
    return 2;
}
try
{
    return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
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
