using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Model;

public sealed class TokenizerTests
{
    [Theory]
    [InlineData("Hello, world.")]
    [InlineData("The quick brown fox jumps over the lazy dog. 12345")]
    [InlineData("  leading spaces,\ttabs\nand newlines\n\n")]
    [InlineData("Unicode: café, naïve, 東京, emoji 🙂")]
    [InlineData("for (int i = 0; i < n; i++) { sum += values[i]; }")]
    public void GenAiTokenizerRoundTripsText(string text)
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var tokens = tokenizer.Encode(text);
        Assert.NotEmpty(tokens);
        Assert.All(tokens, t => Assert.InRange(t, 0, 511));
        Assert.Equal(text, tokenizer.Decode(tokens));

        using var stream = tokenizer.CreateStream();
        Assert.Equal(text, string.Concat(tokens.Select(stream.Decode)));
    }

    [Fact]
    public void MergesLearnedFromTheTextShortenCommonWords()
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        Assert.True(tokenizer.Encode(" the cache").Length < " the cache".Length / 2);
    }

    [Fact]
    public void ChatTemplateRendersTurns()
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var text = tokenizer.ApplyChatTemplate("""[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}]""");
        Assert.Equal("<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n", text);
        var tokens = tokenizer.Encode(text);
        Assert.Contains(508, tokens); // <|system|> is one special token
    }
}
