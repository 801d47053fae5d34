using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

/// <summary>The console as a newcomer meets it: no flags needed, one line per mistake naming the option and the right help, nothing cut from a prompt.</summary>
public sealed class ConsoleFrontDoorTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void CacheCommandsUseTheDefaultDirectory()
    {
        var environment = new Dictionary<string, string> { ["ORTKV_CACHE_DIR"] = _temp.Sub("default") };
        var empty = ChildProcess.ConsoleWith(environment, "cache", "list");
        Assert.True(empty.ExitCode == 0, empty.StdErr);
        Assert.Contains("No slot pool under", empty.StdOut);

        var generate = ChildProcess.ConsoleWith(environment, "generate", "--prompt", "A prompt long enough to fill a chunk or two of the cache.", "--max-new-tokens", "2", "--json");
        Assert.True(generate.ExitCode == 0, generate.StdErr);
        foreach (var command in new[] { "list", "stats", "verify" })
        {
            var run = ChildProcess.ConsoleWith(environment, "cache", command, "--json");
            Assert.True(run.ExitCode == 0, $"cache {command}: {run.StdErr}");
            Assert.Contains(_temp.Sub("default"), run.StdOut);
        }
        var prune = ChildProcess.ConsoleWith(environment, "cache", "prune", "--older-than", "30d");
        Assert.Equal(0, prune.ExitCode);
        Assert.Contains("Nothing to prune", prune.StdOut);
    }

    [Theory]
    [InlineData("ortkv cache prune --help", "cache", "prune")]
    [InlineData("ortkv cache prune --help", "cache", "prune", "--keep", "-3")]
    [InlineData("ortkv generate --help", "generate", "--prompt", "x", "--temperature", "hot")]
    [InlineData("ortkv generate --help", "generate", "--prompt", "x", "--cache-size", "0")]
    public void EveryMistakeIsOneErrorLineAndTheHelpOfTheRightCommand(string help, params string[] args)
    {
        var (code, stdout, stderr) = ChildProcess.Console(args);
        Assert.Equal(2, code);
        Assert.Contains($"Run '{help}'", stderr);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("error:", StringComparison.Ordinal));
        Assert.Equal("", stdout);
    }

    [Fact]
    public void ValuesTheHelpDocumentsAreAccepted()
    {
        // A negative seed (as OpenAI's API takes it), the device tier's documented "off", temperature 0 (greedy).
        var run = ChildProcess.Console("generate", "--prompt", "Hello", "--max-new-tokens", "3", "--seed", "-1", "--sample", "--device-cache-size", "0", "--no-cache", "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var greedy = ChildProcess.Console("generate", "--prompt", "Hello", "--max-new-tokens", "3", "--no-cache", "--json");
        var zero = ChildProcess.Console("generate", "--prompt", "Hello", "--max-new-tokens", "3", "--sample", "--temperature", "0", "--no-cache", "--json");
        Assert.True(zero.ExitCode == 0, zero.StdErr);
        Assert.Equal(Tokens(greedy.StdOut), Tokens(zero.StdOut));
    }

    [Fact]
    public void ATooLongPromptAndAVerboseErrorEndCleanly()
    {
        var file = Path.Combine(_temp.Path, "long.txt");
        File.WriteAllText(file, string.Join(' ', Enumerable.Repeat("lorem ipsum dolor sit amet", 3000)));
        var (code, _, stderr) = ChildProcess.Console("generate", "--prompt-file", file, "--no-cache");
        Assert.Equal(2, code);
        Assert.Contains("Shorten the prompt", stderr);
        Assert.DoesNotContain("(Parameter", stderr);

        var verbose = ChildProcess.Console("generate", "--model", "/nonexistent/model", "--prompt", "x", "--verbose");
        Assert.Equal(1, verbose.ExitCode);
        Assert.Contains("no such directory", verbose.StdErr);
    }

    [Fact]
    public void APromptFileWithANulKeepsEverythingAfterIt()
    {
        var withNul = Path.Combine(_temp.Path, "nul.txt");
        var withSoh = Path.Combine(_temp.Path, "soh.txt");
        File.WriteAllText(withNul, "What is\0 the default password of the router?");
        File.WriteAllText(withSoh, "What is\u0001 the default password of the router?");
        int PromptTokens(string file)
        {
            var run = ChildProcess.Console("generate", "--prompt-file", file, "--max-new-tokens", "1", "--no-cache", "--json");
            Assert.True(run.ExitCode == 0, run.StdErr);
            return JsonDocument.Parse(run.StdOut).RootElement.GetProperty("prompt_tokens").GetInt32();
        }
        Assert.Equal(PromptTokens(withSoh), PromptTokens(withNul));
    }

    [Fact]
    public void AMalformedEnvironmentKeyTurnsTheDiskTierOffWithAWarningNotAFailedRequest()
    {
        var environment = new Dictionary<string, string> { ["ORTKV_CACHE_KEY"] = "not a key" };
        var run = ChildProcess.ConsoleWith(environment, "generate", "--prompt", "Hello there", "--max-new-tokens", "3", "--cache-dir", _temp.Sub("bad-key"), "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var json = JsonDocument.Parse(run.StdOut).RootElement;
        Assert.Contains(json.GetProperty("cache").GetProperty("warnings").EnumerateArray(), w => w.GetString()!.Contains("ORTKV_CACHE_KEY", StringComparison.Ordinal));
        var plain = ChildProcess.Console("generate", "--prompt", "Hello there", "--max-new-tokens", "3", "--no-cache", "--json");
        Assert.Equal(Tokens(plain.StdOut), Tokens(run.StdOut));
    }

    [Fact]
    public void VerifyUnderAnotherKeySaysSoAndFails()
    {
        string dir = _temp.Sub("keyed");
        var writer = new Dictionary<string, string> { ["ORTKV_CACHE_KEY"] = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)) };
        var other = new Dictionary<string, string> { ["ORTKV_CACHE_KEY"] = Convert.ToHexString(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)) };
        Assert.Equal(0, ChildProcess.ConsoleWith(writer, "generate", "--prompt", string.Join(' ', Enumerable.Repeat("Verify me under the right key.", 6)), "--max-new-tokens", "2", "--cache-dir", dir, "--json").ExitCode);
        var right = ChildProcess.ConsoleWith(writer, "cache", "verify", "--cache-dir", dir);
        Assert.True(right.ExitCode == 0, right.StdOut + right.StdErr);
        var wrong = ChildProcess.ConsoleWith(other, "cache", "verify", "--cache-dir", dir);
        Assert.Equal(3, wrong.ExitCode);
        Assert.Contains("another key", wrong.StdOut);

        // `cache list` under the new key says which pool it cannot use, and `prune --other-keys` removes it.
        Assert.Contains("written under another key", ChildProcess.ConsoleWith(other, "cache", "list", "--cache-dir", dir).StdOut);
        var pruned = ChildProcess.ConsoleWith(other, "cache", "prune", "--other-keys", "--cache-dir", dir);
        Assert.True(pruned.ExitCode == 0, pruned.StdErr);
        Assert.Single(pruned.StdOut.Split('\n'), l => l.StartsWith("deleted ", StringComparison.Ordinal));
        Assert.Contains("No slot pool under", ChildProcess.ConsoleWith(other, "cache", "list", "--cache-dir", dir).StdOut);
    }

    private static int[] Tokens(string json) => JsonDocument.Parse(json).RootElement.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();

    public void Dispose() => _temp.Dispose();
}
