using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

public sealed class GeneratorTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void SamplingWithASeedIsReproducibleAndSeedsDiffer()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompt = new[] { 10, 20, 30, 40 };
        var options = SearchOptions.FromConfig(model) with { MaxLength = 40, DoSample = true, Temperature = 1.5, TopK = 0, TopP = 1.0 };
        var a = OurTokens.Generate(model, prompt, options with { Seed = 7 });
        var b = OurTokens.Generate(model, prompt, options with { Seed = 7 });
        var c = OurTokens.Generate(model, prompt, options with { Seed = 8 });
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
        // top-k 1 leaves only the most likely token: sampling becomes greedy.
        Assert.Equal(OurTokens.Generate(model, prompt, options with { DoSample = false }), OurTokens.Generate(model, prompt, options with { Seed = 3, TopK = 1 }));
        // A tiny nucleus keeps the most likely token only, too.
        Assert.Equal(OurTokens.Generate(model, prompt, options with { DoSample = false }), OurTokens.Generate(model, prompt, options with { Seed = 4, TopP = 1e-9 }));
    }

    [Fact]
    public void SamplingFollowsTheDistribution()
    {
        var options = new SearchOptions { MaxLength = 10, DoSample = true, Seed = 11, Temperature = 1.0 };
        var sampler = new TokenSampler(options, eosTokenIds: []);
        float[] logits = [0f, MathF.Log(3f), float.NegativeInfinity, 0f];
        var counts = new int[4];
        for (int i = 0; i < 20000; i++) counts[sampler.Next(logits, sequence: [])]++;
        Assert.Equal(0, counts[2]);
        Assert.InRange(counts[1] / 20000.0, 0.57, 0.63); // 3/5
        Assert.InRange(counts[0] / 20000.0, 0.17, 0.23); // 1/5
    }

    [Fact]
    public void OpenAiPenaltiesCountGeneratedTokensAndLogitBiasIsAdded()
    {
        float[] logits = [0f, 3f, 2f, 1f];
        // Presence: once token 1 was generated it loses 1.5 → 1.5 < 2, token 2 wins; the prompt's tokens do not count.
        var presence = new TokenSampler(new SearchOptions { MaxLength = 10, PresencePenalty = 1.5 }, eosTokenIds: []);
        Assert.Equal(1, presence.Next(logits, sequence: [1, 1, 1]));
        Assert.Equal(2, presence.Next(logits, sequence: [1, 1, 1, 1]));
        // Frequency: 0.6 per time generated → token 1 generated twice scores 1.8 < 2.
        var frequency = new TokenSampler(new SearchOptions { MaxLength = 10, FrequencyPenalty = 0.6 }, eosTokenIds: []);
        Assert.Equal([1, 1, 2], new[] { frequency.Next(logits, []), frequency.Next(logits, [1]), frequency.Next(logits, [1, 1]) });
        // Bias: added to the score at every step.
        var bias = new TokenSampler(new SearchOptions { MaxLength = 10, LogitBias = new Dictionary<int, double> { [3] = 2.5, [1] = -100 } }, eosTokenIds: []);
        Assert.Equal(3, bias.Next(logits, []));
        using var model = KvModel.Load(TestPaths.Tiny);
        Assert.Throws<ArgumentOutOfRangeException>(() => new SearchOptions { MaxLength = 10, LogitBias = new Dictionary<int, double> { [model.VocabSize] = 1 } }.Validate(model));
        Assert.Throws<ArgumentOutOfRangeException>(() => new SearchOptions { MaxLength = 10, PresencePenalty = 2.01 }.Validate(model));
    }

    [Fact]
    public void StopsAtAnEosIdFromTheConfig()
    {
        int[] prompt = [5, 6, 7];
        int first;
        using (var model = KvModel.Load(TestPaths.Tiny)) first = OurTokens.Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = 20 })[1];
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("eos"), c => c["model"]!["eos_token_id"] = first);
        using var eosModel = KvModel.Load(folder);
        var tokens = OurTokens.Generate(eosModel, prompt, SearchOptions.FromConfig(eosModel) with { MaxLength = 20 });
        Assert.Equal(first, tokens[^1]);
        Assert.Equal(2, tokens.Length);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RewindThenContinueEqualsAFreshRun(bool shared)
    {
        using var model = KvModel.Load(TestPaths.TinyFp16, new KvModelOptions { SharedBuffer = shared });
        var options = SearchOptions.FromConfig(model) with { MaxLength = 40 };
        int[] prompt = [100, 200, 300, 400, 500];
        var full = OurTokens.Generate(model, prompt, options);

        using var generator = new KvGenerator(model, options);
        generator.AppendTokens(prompt);
        for (int i = 0; i < 10; i++) generator.GenerateNextToken();
        generator.RewindTo(prompt.Length + 3);
        Assert.Equal(full[..3], generator.Sequence.Skip(prompt.Length));
        while (!generator.IsDone) generator.GenerateNextToken();
        Assert.Equal(full, generator.Sequence.Skip(prompt.Length));

        generator.RewindTo(2);
        generator.AppendTokens(prompt[2..]);
        Assert.Equal(full[0], generator.GenerateNextToken());
    }

    [Fact]
    public void LogitsAreBitwiseEqualInBothKvModes()
    {
        using var growing = KvModel.Load(TestPaths.Tiny);
        using var shared = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = true });
        using var a = new KvGenerator(growing, SearchOptions.FromConfig(growing) with { MaxLength = 64 });
        using var b = new KvGenerator(shared, SearchOptions.FromConfig(shared) with { MaxLength = 64 });
        a.AppendTokens([1, 2, 3, 4, 5, 6, 7, 8]);
        b.AppendTokens([1, 2, 3, 4, 5, 6, 7, 8]);
        for (int step = 0; step < 8; step++)
        {
            Assert.Equal(a.GetLogits().ToArray(), b.GetLogits().ToArray());
            Assert.Equal(a.GenerateNextToken(), b.GenerateNextToken());
        }
    }

    [Fact]
    public void BadArgumentsSayWhatIsExpected()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = 8 });
        Assert.Contains("[0, 512)", Assert.Throws<ArgumentOutOfRangeException>(() => generator.AppendTokens([1, 512])).Message);
        Assert.Contains("MaxLength is 8", Assert.Throws<ArgumentException>(() => generator.AppendTokens(new int[9])).Message);
        Assert.Contains("Append prompt tokens", Assert.Throws<InvalidOperationException>(() => generator.GenerateNextToken()).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = model.Layout.MaxLength + 1 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new KvGenerator(model, SearchOptions.FromConfig(model) with { TopP = 0 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new KvGenerator(model, SearchOptions.FromConfig(model) with { Temperature = 0 }));
        Assert.Empty(generator.Sequence);
    }

    [Fact]
    public void TextGeneratorStreamsTheSameTextItReturns()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var streamed = new System.Text.StringBuilder();
        var result = new TextGenerator(model, tokenizer).Generate(tokenizer.Encode("Hello, world."), 12, onText: p => streamed.Append(p));
        Assert.Equal(12, result.Tokens.Length);
        Assert.Equal(StopReason.MaxNewTokens, result.StopReason);
        Assert.Equal(result.Text, streamed.ToString());
        Assert.InRange(result.TtftMs, 0.001, result.TotalMs);
    }

    public void Dispose() => _temp.Dispose();
}
