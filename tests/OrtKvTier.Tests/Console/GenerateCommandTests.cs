using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

public sealed class GenerateCommandTests
{
    [Fact]
    public void GenerateJsonOnTheShippedModelEqualsTheLibrary()
    {
        var (code, stdout, stderr) = ChildProcess.Console("generate", "--prompt", "Hello", "--max-new-tokens", "8", "--json");
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
        Assert.Equal(Generation.GenAiParityTests.Greedy(model, tokenizer.Encode("Hello"), 9), tokens);
    }

    [Fact]
    public void TokensPromptAndSamplingOptionsWork()
    {
        var a = ChildProcess.Console("generate", "--tokens", "1,2,3", "--max-new-tokens", "6", "--sample", "--seed", "5", "--temperature", "1.3", "--json");
        var b = ChildProcess.Console("generate", "--tokens", "1,2,3", "--max-new-tokens", "6", "--sample", "--seed", "5", "--temperature", "1.3", "--json");
        Assert.Equal(0, a.ExitCode);
        Assert.Equal(JsonDocument.Parse(a.StdOut).RootElement.GetProperty("tokens").ToString(), JsonDocument.Parse(b.StdOut).RootElement.GetProperty("tokens").ToString());
    }

    [Theory]
    [InlineData("no such directory", "generate", "--model", "/nonexistent/model", "--prompt", "x")]
    [InlineData("Give exactly one of", "generate")]
    [InlineData("--max-new-tokens expects an integer", "generate", "--prompt", "x", "--max-new-tokens", "many")]
    [InlineData("Unknown option: --frobnicate", "generate", "--prompt", "x", "--frobnicate", "1")]
    [InlineData("[0, 512)", "generate", "--tokens", "1,99999")]
    [InlineData("Unknown command", "frobnicate")]
    public void ErrorsGoToStderrWithoutAStackTrace(string message, params string[] args)
    {
        var (code, stdout, stderr) = ChildProcess.Console(args);
        Assert.NotEqual(0, code);
        Assert.Contains(message, stderr);
        Assert.DoesNotContain("   at ", stderr);
        Assert.Equal("", stdout);
    }
}
