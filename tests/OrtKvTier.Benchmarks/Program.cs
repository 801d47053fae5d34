using BenchmarkDotNet.Running;
using OrtKvTier.Benchmarks.Commands;
using OrtKvTier.Console;
using OrtKvTier.Model;
using OrtKvTier.Storage;

const string usage = "usage: ortkv-bench <bench> [options]   (or BenchmarkDotNet arguments, e.g. --filter '*SlotPool*')\n\n" +
    BenchTtftCommand.Usage + "\n" + BenchChunksCommand.Usage + "\n" + BenchDiskCommand.Usage + "\n" + BenchRemoteCommand.Usage + "\n" +
    BenchChatCommand.Usage + "\n" + BenchCaptureCommand.Usage + "\n" + BenchLoadCommand.Usage + "\n" + BenchServeCommand.Usage + "\n" +
    BenchWritersCommand.Usage + "\n" + BenchLookupCommand.Usage + "\n" + BenchQualityCommand.Usage + "\n" + BenchDocumentsCommand.Usage + "\n" + BenchBatchCommand.Usage + "\n";

if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
{
    Console.Write(usage);
    return args.Length == 0 ? 2 : 0;
}

Func<OrtKvTier.Console.CommandLine, int>? bench = args[0] switch
{
    "ttft" => BenchTtftCommand.Run,
    "chunks" => BenchChunksCommand.Run,
    "disk" => BenchDiskCommand.Run,
    "remote" => BenchRemoteCommand.Run,
    "chat" => BenchChatCommand.Run,
    "capture" => BenchCaptureCommand.Run,
    "load" => BenchLoadCommand.Run,
    "serve" => BenchServeCommand.Run,
    "writers" => BenchWritersCommand.Run,
    "lookup" => BenchLookupCommand.Run,
    "quality" => BenchQualityCommand.Run,
    "documents" => BenchDocumentsCommand.Run,
    "batch" => BenchBatchCommand.Run,
    _ => null,
};
if (bench is null)
{
    BenchmarkSwitcher.FromAssembly(typeof(OrtKvTier.Benchmarks.SlotPoolBenchmarks).Assembly).Run(args);
    return 0;
}

try
{
    return bench(new OrtKvTier.Console.CommandLine(args.Skip(1), new HashSet<string> { "json", "encrypt", "no-encrypt", "always-restore", "ttft" }));
}
catch (Exception e) when (e is UsageException or ModelFolderException or ArgumentException or InvalidOperationException or IOException)
{
    Console.Error.WriteLine($"error: {e.Message}");
    return e is UsageException ? 2 : 1;
}
