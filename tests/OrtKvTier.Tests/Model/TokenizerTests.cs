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

/// <summary>GenAI reads text as a C string; a NUL character must never cut what follows it.</summary>
public sealed class NulCharacterTests
{
    [Theory]
    [InlineData("before\0after")]
    [InlineData("\0starts with it")]
    [InlineData("ends with it\0")]
    [InlineData("two\0\0in a row, then more text; and\0one more")]
    public void EveryCharacterAfterANulIsEncoded(string text)
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var tokens = tokenizer.Encode(text);
        Assert.Equal(text, tokenizer.Decode(tokens));
        // The tokenizer's own encoding of the same text with another one-byte control character in each NUL's place: the
        // same tokens but for those places (byte 0 and byte 1 are neighbours in a byte-level vocabulary).
        var withSoh = tokenizer.Encode(text.Replace('\0', '\u0001'));
        Assert.Equal(withSoh.Length, tokens.Length);
        Assert.Equal(withSoh.Select(t => t == tokenizer.Encode("\u0001").Single() ? -1 : t), tokens.Select(t => t == tokenizer.Encode("\u0001").Single() - 1 ? -1 : t));
    }

    [Fact]
    public void AChatTemplateKeepsTheMessagesAfterANul()
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var text = tokenizer.ApplyChatTemplate("""[{"role":"system","content":"Be brief.\u0000 Really."},{"role":"user","content":"What is\u0000 a cache?"}]""");
        Assert.Equal("<|system|>\nBe brief.\0 Really.<|end|>\n<|user|>\nWhat is\0 a cache?<|end|>\n<|assistant|>\n", text);
    }
}
