using System.Diagnostics;
using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

/// <summary>`dotnet pack` of the console makes the .NET tool `ortkv`; installed anywhere, it runs on the tiny model it carries.</summary>
public sealed class ToolPackageTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void ThePackedToolInstallsAndGeneratesOutsideTheRepository()
    {
        // The build already ran: pack it as it is, into places of this test's own (NuGet's cache included).
        var environment = new Dictionary<string, string> { ["NUGET_PACKAGES"] = _temp.Sub("nuget"), ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1", ["DOTNET_NOLOGO"] = "1" };
        Dotnet(environment, TestPaths.RepoRoot, "pack", Path.Combine("samples", "OrtKvTier.Console"), "-c", "Release", "--no-build", "-o", _temp.Sub("package"),
            "-p:PublishDir=" + _temp.Sub("publish") + "/");
        Dotnet(environment, _temp.Path, "tool", "install", "ortkv", "--tool-path", _temp.Sub("tools"), "--add-source", _temp.Sub("package"), "--ignore-failed-sources");

        var away = _temp.Sub("elsewhere");
        Directory.CreateDirectory(away);
        environment["ORTKV_CACHE_DIR"] = _temp.Sub("cache");
        var first = Run(environment, away, Path.Combine(_temp.Sub("tools"), "ortkv"), "generate", "--prompt", "A prompt long enough to fill a chunk of the cache, and then some more words.", "--max-new-tokens", "3", "--always-restore", "--json");
        var second = Run(environment, away, Path.Combine(_temp.Sub("tools"), "ortkv"), "generate", "--prompt", "A prompt long enough to fill a chunk of the cache, and then some more words.", "--max-new-tokens", "3", "--always-restore", "--json");
        var a = JsonDocument.Parse(first).RootElement;
        var b = JsonDocument.Parse(second).RootElement;
        Assert.EndsWith(Path.Combine("models", "tiny"), a.GetProperty("model").GetString());
        Assert.Equal(a.GetProperty("tokens").GetRawText(), b.GetProperty("tokens").GetRawText());
        Assert.True(b.GetProperty("cached_tokens").GetInt32() > 0, second);
        Assert.Contains(_temp.Sub("cache"), Run(environment, away, Path.Combine(_temp.Sub("tools"), "ortkv"), "cache", "list"));
    }

    private static void Dotnet(Dictionary<string, string> environment, string directory, params string[] args) => Run(environment, directory, "dotnet", args);

    private static string Run(Dictionary<string, string> environment, string directory, string file, params string[] args)
    {
        var info = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = directory };
        foreach (var a in args) info.ArgumentList.Add(a);
        foreach (var (k, v) in environment) info.Environment[k] = v;
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(TimeSpan.FromMinutes(3))) process.Kill(entireProcessTree: true);
        Assert.True(process.HasExited && process.ExitCode == 0, $"{file} {string.Join(' ', args)}: {stdout.Result}\n{stderr.Result}");
        return stdout.Result;
    }

    public void Dispose() => _temp.Dispose();
}
