using System.Text.Json;
using OrtKvTier.Tests.Support;
using OrtKvTier.Model;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Console;

public sealed class GenerateCommandTests
{
    [Fact]
    public void GenerateJsonOnTheShippedModelEqualsTheLibrary()
    {
        var (code, stdout, stderr) = ChildProcess.Console("generate", "--prompt", "Hello", "--max-new-tokens", "8", "--json", "--no-cache");
        Assert.True(code == 0, stderr);
        using var json = JsonDocument.Parse(stdout);
        var root = json.RootElement;
        var tokens = root.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()).ToArray();
        Assert.Equal(8, tokens.Length);
        Assert.Equal(1, root.GetProperty("prompt_tokens").GetInt32());
        Assert.True(root.GetProperty("ttft_ms").GetDouble() > 0);
        Assert.True(root.GetProperty("total_ms").GetDouble() >= root.GetProperty("ttft_ms").GetDouble());
        Assert.Equal(JsonValueKind.String, root.GetProperty("text").ValueKind);

        using var model = OrtKvTier.Model.KvModel.Load(TestPaths.Tiny);
        using var tokenizer = new OrtKvTier.Model.ModelTokenizer(TestPaths.Tiny);
        Assert.Equal(OurTokens.Greedy(model, tokenizer.Encode("Hello"), 9), tokens);
    }

    [Fact]
    public void TokensPromptAndSamplingOptionsWork()
    {
        var a = ChildProcess.Console("generate", "--tokens", "1,2,3", "--max-new-tokens", "6", "--sample", "--seed", "5", "--temperature", "1.3", "--json", "--no-cache");
        var b = ChildProcess.Console("generate", "--tokens", "1,2,3", "--max-new-tokens", "6", "--sample", "--seed", "5", "--temperature", "1.3", "--json", "--no-cache");
        Assert.Equal(0, a.ExitCode);
        Assert.Equal(JsonDocument.Parse(a.StdOut).RootElement.GetProperty("tokens").ToString(), JsonDocument.Parse(b.StdOut).RootElement.GetProperty("tokens").ToString());
    }

    [Fact]
    public void ASecondProcessRestoresTheFirstProcesssPromptFromDiskWithTheSameTokens()
    {
        using var temp = new TempDir();
        var prompt = string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6));
        string[] Args(params string[] more) => ["generate", "--prompt", prompt, "--max-new-tokens", "8", "--json", "--chunk-tokens", "16", "--cache-size", "16MiB", .. more];
        var reference = Json(ChildProcess.Console(Args("--no-cache")));
        var first = Json(ChildProcess.Console(Args("--cache-dir", temp.Path)));
        var second = Json(ChildProcess.Console(Args("--cache-dir", temp.Path)));

        int promptTokens = reference.GetProperty("prompt_tokens").GetInt32();
        Assert.Equal(0, first.GetProperty("cached_tokens").GetInt32());
        Assert.True(first.GetProperty("cache").GetProperty("captured_chunks").GetInt32() >= promptTokens / 16);
        int cached = second.GetProperty("cached_tokens").GetInt32();
        Assert.Equal(Math.Min(promptTokens / 16 * 16, promptTokens - 2), cached);
        Assert.Equal(cached, second.GetProperty("cache").GetProperty("tokens_by_tier").GetProperty("disk").GetInt32());
        Assert.Equal(promptTokens - cached, second.GetProperty("prefill_tokens").GetInt32());
        Assert.Equal(reference.GetProperty("tokens").ToString(), first.GetProperty("tokens").ToString());
        Assert.Equal(reference.GetProperty("tokens").ToString(), second.GetProperty("tokens").ToString());

        var stats = ChildProcess.Console("cache", "stats", "--cache-dir", temp.Path, "--json");
        Assert.True(stats.ExitCode == 0, stats.StdErr);
        Assert.True(JsonDocument.Parse(stats.StdOut).RootElement.GetProperty("pools")[0].GetProperty("entries").GetInt32() >= promptTokens / 16);
    }


    [Theory]
    [InlineData("no such directory", "generate", "--model", "/nonexistent/model", "--prompt", "x")]
    [InlineData("Give exactly one of", "generate")]
    [InlineData("--max-new-tokens expects a whole number", "generate", "--prompt", "x", "--max-new-tokens", "many")]
    [InlineData("--max-new-tokens expects a whole number from 1 to 1000000; got '2147483647'", "generate", "--prompt", "x", "--max-new-tokens", "2147483647")]
    [InlineData("--top-k expects a whole number", "generate", "--prompt", "x", "--top-k", "abc")]
    [InlineData("--prompt needs a value; got the option '--json'", "generate", "--prompt", "--json")]
    [InlineData("Unrecognized command or argument '--frobnicate'", "generate", "--prompt", "x", "--frobnicate", "1")]
    [InlineData("File does not exist: 'missing.txt'", "warm", "--file", "missing.txt")]
    [InlineData("File does not exist: 'typo.txt'", "chat", "--system-file", "typo.txt")]
    [InlineData("Argument 'gpu' not recognized", "generate", "--prompt", "x", "--device", "gpu")]
    [InlineData("[0, 512)", "generate", "--tokens", "1,99999", "--no-cache")]
    [InlineData("Give --cache-dir or --no-cache, not both", "generate", "--prompt", "x", "--no-cache", "--cache-dir", "/tmp/x")]
    [InlineData("--cache-size expects a size such as 512MiB or 2GiB (binary) or 2GB (decimal)", "generate", "--prompt", "x", "--cache-size", "lots")]
    [InlineData("--remote-ttl expects a duration", "generate", "--prompt", "x", "--remote", "redis://127.0.0.1:1", "--remote-ttl", "forever")]
    [InlineData("Expected redis://host:port", "generate", "--prompt", "x", "--remote", "http://example:1")]
    [InlineData("Unrecognized command or argument 'frobnicate'", "frobnicate")]
    public void ErrorsGoToStderrWithoutAStackTrace(string message, params string[] args)
    {
        var (code, stdout, stderr) = ChildProcess.Console(args);
        Assert.NotEqual(0, code);
        Assert.Contains(message, stderr);
        Assert.DoesNotContain("   at ", stderr);
        Assert.Equal("", stdout);
    }

    [Theory]
    [InlineData("generate", "--max-new-tokens", "Most tokens to generate. [default: 32]")]
    [InlineData("chat", "--system-file", "[default: 128]")]
    [InlineData("warm", "--piece-tokens", "[default: 256]")]
    [InlineData("cache prune", "--older-than", "Delete pools not used for this long")]
    [InlineData("build-model", "--rotary", "<attention|position-ids>")]
    public void EveryCommandHasHelpWithDescriptionsAndDefaults(string command, string option, string expected)
    {
        foreach (var help in new[] { "--help", "-h" })
        {
            var (code, stdout, stderr) = ChildProcess.Console([.. command.Split(' '), help]);
            Assert.True(code == 0, stderr);
            Assert.Contains(option, stdout);
            Assert.Contains(expected, stdout);
        }
    }

    [Fact]
    public void VersionAndSizesWithDecimalAndBinarySuffixes()
    {
        var version = ChildProcess.Console("--version");
        Assert.Equal(0, version.ExitCode);
        Assert.Matches(@"^\d+\.\d+\.\d+", version.StdOut);
        using var temp = new TempDir();
        foreach (var size in new[] { "2GB", "2GiB", "1.5G", "512MiB", "600MB" })
        {
            var run = ChildProcess.Console("generate", "--prompt", "x", "--max-new-tokens", "1", "--cache-dir", temp.Sub(size), "--cache-size", size, "--json");
            Assert.True(run.ExitCode == 0, $"{size}: {run.StdErr}");
        }
    }
}
