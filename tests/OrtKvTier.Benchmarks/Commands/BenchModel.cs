using System.Diagnostics;
using System.Numerics;
using System.Reflection;
using OrtKvTier.ModelBuilder;

namespace OrtKvTier.Benchmarks.Commands;

using OrtKvTier.Console;

/// <summary>What the model benches share: the bench-size model folder, synthetic prompts, medians and re-running this console as a child.</summary>
internal static class BenchModel
{
    /// <summary><paramref name="folder"/> if given, else <c>models/bench</c> in the repository, built (about 30 s, 500 MB) when missing.</summary>
    public static string Resolve(string? folder)
    {
        if (folder is not null) return folder;
        var models = Path.GetDirectoryName(RepoPaths.FindShipped("tiny"))!;
        var bench = Path.Combine(models, "bench");
        if (!File.Exists(Path.Combine(bench, "genai_config.json")))
            System.Console.Error.WriteLine($"Building the bench-size model in {bench} (about 500 MB, once)...");
        return ModelFolderBuilder.EnsureBuilt(bench, ModelShape.Bench);
    }

    /// <summary>
    /// The model a bench runs for prompts of <paramref name="tokens"/> tokens: <paramref name="model"/> when it is a folder;
    /// the preset <c>tiny</c> or <c>bench</c> (default) otherwise, built with a longer context (<c>models/bench-tiny-ctx8192</c>,
    /// <c>models/bench-ctx8192</c>: the same shape and weights' seed, 8192 positions) when its own is too short.
    /// </summary>
    public static string ResolveFor(string? model, int tokens)
    {
        if (model is not null && model is not ("tiny" or "bench")) return model;
        var shape = model == "tiny" ? ModelShape.Tiny : ModelShape.Bench;
        if (tokens <= shape.MaxLength) return model == "tiny" ? RepoPaths.FindShipped("tiny") : Resolve(null);
        int length = Math.Max(8192, (int)BitOperations.RoundUpToPowerOf2((uint)tokens));
        var folder = Path.Combine(Path.GetDirectoryName(RepoPaths.FindShipped("tiny"))!, $"bench{(model == "tiny" ? "-tiny" : "")}-ctx{length}");
        if (!File.Exists(Path.Combine(folder, "genai_config.json")))
            System.Console.Error.WriteLine($"Building {folder}: the {model ?? "bench"} shape with {length} positions (once)...");
        return ModelFolderBuilder.EnsureBuilt(folder, shape with { MaxLength = length });
    }

    /// <summary><c>../shared/models/trained-byte-4L</c> beside the repository: the small model trained on English text.</summary>
    public static string TrainedModel()
    {
        var folder = Path.GetFullPath(Path.Combine(RepoFile(".."), "shared", "models", "trained-byte-4L"));
        if (!File.Exists(Path.Combine(folder, "genai_config.json")))
            throw new UsageException($"The trained model is not at {folder}; pass --model DIR.");
        return folder;
    }

    /// <summary>A path relative to the repository's root.</summary>
    public static string RepoFile(string relative) => Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(RepoPaths.FindShipped("tiny")))!, relative);

    /// <summary><c>models/bench-large</c> in the repository (about 1.4 GB with external data), built when missing.</summary>
    public static string ResolveLarge()
    {
        var models = Path.GetDirectoryName(RepoPaths.FindShipped("tiny"))!;
        var large = Path.Combine(models, "bench-large");
        if (!File.Exists(Path.Combine(large, "genai_config.json")))
            System.Console.Error.WriteLine($"Building the large model in {large} (about 1.4 GB, once)...");
        return ModelFolderBuilder.EnsureBuilt(large, ModelShape.Large);
    }

    /// <summary>Deterministic token ids clear of byte and special tokens.</summary>
    public static int[] Tokens(int count, int seed, int vocab)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => random.Next(300, vocab - 16)).ToArray();
    }

    /// <summary>How long <paramref name="action"/> took.</summary>
    public static TimeSpan Time(Action action)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        action();
        return clock.Elapsed;
    }

    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    /// <summary>Removes a bench's scratch directory, ignoring what cannot be removed.</summary>
    /// <summary>A loopback port nothing listens on now (for the servers a bench starts).</summary>
    public static int FreePort()
    {
        var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public static void TryDelete(string dir)
    {
        try { Directory.Delete(dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Runs this console again with <paramref name="args"/> and returns its stdout; throws with its stderr when it fails.</summary>
    public static string RunSelf(TimeSpan timeout, params string[] args)
    {
        var self = Environment.ProcessPath!;
        var info = new ProcessStartInfo(self) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (Path.GetFileNameWithoutExtension(self) == "dotnet") info.ArgumentList.Add(Assembly.GetEntryAssembly()!.Location);
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {self}.");
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"The child bench process did not finish in {timeout}.");
        }
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"The child bench process failed ({process.ExitCode}): {stderr.Result}");
        return stdout.Result;
    }
}
