using System.Diagnostics;
using System.Reflection;

namespace OrtKvTier.Tests.Support;

/// <summary>Runs the sample console (<c>ortkv</c>) as a real child process.</summary>
internal static class ConsoleProcess
{
    public static string DllPath { get; } = typeof(ConsoleProcess).Assembly.GetCustomAttributes<AssemblyMetadataAttribute>()
        .Single(a => a.Key == "ConsoleDll").Value!;

    public static (int ExitCode, string StdOut, string StdErr) Run(params string[] args) => Run(TimeSpan.FromMinutes(3), args);

    public static (int ExitCode, string StdOut, string StdErr) Run(TimeSpan timeout, params string[] args)
    {
        using var process = Start(args);
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"ortkv {string.Join(' ', args)} did not finish in {timeout}.");
        }
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    public static Process Start(params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = TestPaths.RepoRoot };
        info.ArgumentList.Add(DllPath);
        foreach (var a in args) info.ArgumentList.Add(a);
        return Process.Start(info) ?? throw new InvalidOperationException("Could not start dotnet.");
    }
}
