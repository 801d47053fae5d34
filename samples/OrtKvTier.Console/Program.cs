using System.CommandLine;
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using OrtKvTier.Model;

bool verbose = args.Contains("--verbose");
StderrLogger.Verbose = verbose;
var root = ConsoleCli.Build((path, result) =>
{
    var words = path.Split(' ');
    var options = new CommandLine(result);
    return path switch
    {
        "generate" => GenerateCommand.Run(options),
        "chat" => ChatCommand.Chat(options),
        "warm" => ChatCommand.Warm(options),
        "rag" => RagCommand.Run(options),
        "build-model" => BuildModelCommand.Run(options),
        _ when words[0] == "cache" => CacheCommand.Run(words[1], options),
        _ => throw new UsageException($"Unknown command '{path}'."),
    };
});

var parsed = root.Parse(args.Length == 0 ? ["--help"] : args);
if (args.Length == 0)
{
    parsed.Invoke();
    return 2;
}
string help = $"ortkv {ConsoleCli.Path(parsed.CommandResult)} --help".Replace($"ortkv {root.Name} ", "ortkv ");
if (parsed.Errors.Count > 0 && !args.Any(a => a is "-h" or "--help" or "-?"))
{
    foreach (var error in parsed.Errors) Console.Error.WriteLine($"error: {error.Message}");
    Console.Error.WriteLine($"Run '{help}' for the options.");
    return 2;
}
try
{
    return parsed.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false });
}
catch (Exception e)
{
    // What the user can fix is one line (the whole exception with --verbose); anything else names its type too.
    bool theirs = e is UsageException or ModelFolderException or ArgumentException or InvalidOperationException or IOException or UnauthorizedAccessException;
    string message = e is ArgumentException argument ? argument.Message.Split(" (Parameter '")[0] : e.Message;
    Console.Error.WriteLine(verbose ? $"error: {e}" : theirs ? $"error: {message}" : $"error: {e.GetType().Name}: {message}");
    if (e is UsageException) Console.Error.WriteLine($"Run '{help}' for the options.");
    return e is UsageException ? 2 : 1;
}
