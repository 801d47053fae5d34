using System.Text.Json.Nodes;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

/// <summary>The <c>search</c> options GenAI applies are applied the same way: its tokens, with the folder's own options.</summary>
public sealed class SearchOptionParityTests : IDisposable
{
    private readonly TempDir _temp = new();
    private readonly string _text = string.Join(' ', Enumerable.Repeat("the cat sat on the mat and the dog sat on the log", 4));

    [Theory]
    [InlineData("tiny", 1.3)]
    [InlineData("tiny-fp16", 1.3)]
    [InlineData("tiny", 0.7)]
    public void RepetitionPenaltyFromTheFolderGivesGenAisTokens(string shipped, double penalty)
    {
        var folder = TestPaths.CopyModel(TestPaths.Shipped(shipped), _temp.Sub("m"), c => c["search"]!["repetition_penalty"] = penalty);
        var (ours, theirs, plain) = Compare(folder, newTokens: 30);
        Assert.Equal(theirs, ours);
        Assert.NotEqual(plain, ours); // the option changed the tokens: the test sees it
    }

    [Fact]
    public void MinLengthKeepsEndOfSequenceAwayAsGenAiDoes()
    {
        // Make the third greedy token an end-of-sequence id, then ask for a minimum length past it.
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var prompt = tokenizer.Encode(_text);
        int[] greedy;
        using (var model = KvModel.Load(TestPaths.Tiny)) greedy = OurTokens.Greedy(model, prompt, prompt.Length + 8);
        int eos = greedy[2];
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"), c =>
        {
            c["model"]!["eos_token_id"] = new JsonArray(eos);
            c["search"]!["min_length"] = prompt.Length + 6;
        });
        var (ours, theirs, _) = Compare(folder, newTokens: 12);
        Assert.Equal(theirs, ours);
        Assert.DoesNotContain(eos, ours.Take(6 - 1)); // suppressed while the sequence is shorter than min_length
        Assert.True(ours.Length > 3, "generation went past the token that was end-of-sequence");
    }

    [Fact]
    public void SamplingWithTopKOfOneIsGreedyAsInGenAi()
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"), c =>
        {
            c["search"]!["do_sample"] = true;
            c["search"]!["top_k"] = 1;
            c["search"]!["temperature"] = 0.7;
        });
        using var tokenizer = new ModelTokenizer(folder);
        var prompt = tokenizer.Encode(_text);
        using var model = KvModel.Load(folder);
        Assert.True(SearchOptions.FromConfig(model).DoSample);
        int maxLength = prompt.Length + 20;
        Assert.Equal(GenAiReference.Tokens(folder, prompt, maxLength, forceGreedy: false), OurTokens.Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = maxLength }));
    }

    [Fact]
    public void ExplicitOptionsStillWinOverTheFolders()
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"), c => c["search"]!["repetition_penalty"] = 1.3);
        using var tokenizer = new ModelTokenizer(folder);
        var prompt = tokenizer.Encode(_text);
        using var model = KvModel.Load(folder);
        using var plainModel = KvModel.Load(TestPaths.Tiny);
        int maxLength = prompt.Length + 30;
        Assert.Equal(1.3, SearchOptions.FromConfig(model).RepetitionPenalty);
        Assert.Equal(OurTokens.Greedy(plainModel, prompt, maxLength),
            OurTokens.Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = maxLength, RepetitionPenalty = 1.0 }));
    }

    /// <summary>Our tokens and GenAI's with the folder's options, and ours without them (the shipped folder's options).</summary>
    private (int[] Ours, int[] Theirs, int[] Plain) Compare(string folder, int newTokens)
    {
        using var tokenizer = new ModelTokenizer(folder);
        var prompt = tokenizer.Encode(_text);
        int maxLength = prompt.Length + newTokens;
        using var model = KvModel.Load(folder);
        var ours = OurTokens.Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = maxLength });
        var plain = OurTokens.Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = maxLength, RepetitionPenalty = 1.0, MinLength = 0 });
        return (ours, GenAiReference.Tokens(folder, prompt, maxLength, forceGreedy: true), plain);
    }

    public void Dispose() => _temp.Dispose();
}
