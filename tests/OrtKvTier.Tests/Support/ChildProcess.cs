using System.Diagnostics;
using System.Reflection;

namespace OrtKvTier.Tests.Support;

/// <summary>Runs a built .NET program of this repository as a real child process.</summary>
internal static class ChildProcess
{
    /// <summary>The sample console, <c>ortkv</c>.</summary>
    public static string ConsoleDll { get; } = Metadata("ConsoleDll");

    /// <summary>The benchmarks, <c>ortkv-bench</c>.</summary>
    public static string BenchDll { get; } = Metadata("BenchDll");

    /// <summary>The reliability tests' writer/reader/lock-holder child.</summary>
    public static string TestChildDll { get; } = Metadata("TestChildDll");

    /// <summary>The GPU checks console (it runs on the CPU too, skipping the device).</summary>
    public static string GpuChecksDll { get; } = Metadata("GpuChecksDll");

    /// <summary>The OpenAI-compatible server sample.</summary>
    public static string ServerDll { get; } = Metadata("ServerDll");

    /// <summary>Where child consoles put their cache unless told otherwise (small: tests pass --no-cache or their own --cache-dir).</summary>
    public static string DefaultCacheDir { get; } = Path.Combine(Path.GetTempPath(), $"ortkv-test-default-cache-{Environment.ProcessId}");

    /// <summary>Runs the console to completion.</summary>
    public static (int ExitCode, string StdOut, string StdErr) Console(params string[] args) => Run(ConsoleDll, TimeSpan.FromMinutes(5), args);

    /// <summary>Runs the console with extra environment variables (for example a fleet's shared <c>ORTKV_CACHE_KEY</c>).</summary>
    public static (int ExitCode, string StdOut, string StdErr) ConsoleWith(IReadOnlyDictionary<string, string> environment, params string[] args) =>
        Run(ConsoleDll, TimeSpan.FromMinutes(5), stdin: null, args, environment);

    /// <summary>Runs a bench to completion.</summary>
    public static (int ExitCode, string StdOut, string StdErr) Bench(params string[] args) => Run(BenchDll, TimeSpan.FromMinutes(5), args);

    public static (int ExitCode, string StdOut, string StdErr) Run(string dll, TimeSpan timeout, params string[] args) => Run(dll, timeout, stdin: null, args);

    /// <summary>Runs the console with <paramref name="stdin"/> as its input (then end of input).</summary>
    public static (int ExitCode, string StdOut, string StdErr) ConsoleWithInput(string stdin, params string[] args) => Run(ConsoleDll, TimeSpan.FromMinutes(5), stdin, args);

    private static (int ExitCode, string StdOut, string StdErr) Run(string dll, TimeSpan timeout, string? stdin, string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        using var process = Start(dll, user: null, args, environment);
        if (stdin is not null) process.StandardInput.Write(stdin);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{Path.GetFileName(dll)} {string.Join(' ', args)} did not finish in {timeout}.");
        }
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    public static Process Start(string dll, params string[] args) => Start(dll, user: null, args);

    /// <summary>Runs the console to completion as the user <paramref name="uid"/> (through setpriv; the tests run as root).</summary>
    public static (int ExitCode, string StdOut, string StdErr) ConsoleAs(int uid, params string[] args) => ConsoleAs(uid, new Dictionary<string, string>(), args);

    /// <summary>Runs the console as another user (group = its uid) with extra environment variables.</summary>
    public static (int ExitCode, string StdOut, string StdErr) ConsoleAs(int uid, IReadOnlyDictionary<string, string> environment, params string[] args) =>
        ConsoleAs(uid, gid: uid, environment, args);

    /// <summary>Runs the console as user <paramref name="uid"/> in group <paramref name="gid"/> with extra environment variables.</summary>
    public static (int ExitCode, string StdOut, string StdErr) ConsoleAs(int uid, int gid, IReadOnlyDictionary<string, string> environment, params string[] args)
    {
        using var process = Start(ConsoleDll, (uid, gid), args, environment);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(5)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"ortkv {string.Join(' ', args)} as uid {uid}, gid {gid} did not finish.");
        }
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    private static Process Start(string dll, (int Uid, int Gid)? user, string[] args, IReadOnlyDictionary<string, string>? environment = null)
    {
        var info = new ProcessStartInfo(user is null ? "dotnet" : "setpriv")
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = TestPaths.RepoRoot,
        };
        if (user is { } who)
        {
            foreach (var a in new[] { $"--reuid={who.Uid}", $"--regid={who.Gid}", "--clear-groups", "dotnet" }) info.ArgumentList.Add(a);
            info.Environment["HOME"] = info.Environment["DOTNET_CLI_HOME"] = Path.GetTempPath();
        }
        // Console runs that do not name --cache-dir must not touch the user's real cache.
        info.Environment["ORTKV_CACHE_DIR"] = DefaultCacheDir;
        foreach (var (name, value) in environment ?? new Dictionary<string, string>()) info.Environment[name] = value;
        info.ArgumentList.Add(dll);
        foreach (var a in args) info.ArgumentList.Add(a);
        var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {info.FileName}.");
        Started.Add((process.Id, process.StartTime));
        return process;
    }

    /// <summary>Children still running when the test host exits (a test that failed before killing its writer or lock holder) are killed then.</summary>
    private static readonly System.Collections.Concurrent.ConcurrentBag<(int Id, DateTime StartTime)> Started = Track();

    private static System.Collections.Concurrent.ConcurrentBag<(int Id, DateTime StartTime)> Track()
    {
        var started = new System.Collections.Concurrent.ConcurrentBag<(int Id, DateTime StartTime)>();
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            foreach (var (id, startTime) in started)
                try
                {
                    using var child = Process.GetProcessById(id);
                    if (child.StartTime == startTime && !child.HasExited) child.Kill(entireProcessTree: true); // the same process, not a reused id
                }
                catch (Exception e) when (e is ArgumentException or InvalidOperationException or System.ComponentModel.Win32Exception) { }
        };
        return started;
    }

    /// <summary>Runs any program to completion and returns its trimmed stdout (system tools: stat, mount).</summary>
    public static string Output(string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info) ?? throw new InvalidOperationException($"Could not start {file}.");
        var output = process.StandardOutput.ReadToEnd().Trim();
        process.WaitForExit();
        return output;
    }

    /// <summary>Reads stdout lines until one equals <paramref name="line"/>; throws with stderr if the child exits first.</summary>
    public static void WaitForLine(Process process, string line, TimeSpan timeout)
    {
        var read = Task.Run(() =>
        {
            string? l;
            while ((l = process.StandardOutput.ReadLine()) is not null)
                if (l == line) return true;
            return false;
        });
        if (!read.Wait(timeout) || !read.Result)
            throw new InvalidOperationException($"Child did not print '{line}': {process.StandardError.ReadToEnd()}");
    }

    private static string Metadata(string key) => typeof(ChildProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>().Single(a => a.Key == key).Value!;
}
