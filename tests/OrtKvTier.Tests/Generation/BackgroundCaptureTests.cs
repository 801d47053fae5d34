using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Cache;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

/// <summary>A capture running on a pool thread while the generator goes on stores what a synchronous one would.</summary>
public sealed class BackgroundCaptureTests
{
    private const int Chunk = 16;

    public static TheoryData<string, bool> Models => new()
    {
        { "tiny", false }, { "tiny", true }, { "tiny-fp16", false }, { "tiny-fp16", true },
    };

    [Theory]
    [MemberData(nameof(Models))]
    public async Task GeneratingWhileThePromptIsCapturedChangesNeitherTheTokensNorWhatIsStored(string modelName, bool shared)
    {
        using var model = KvModel.Load(TestPaths.Shipped(modelName), new KvModelOptions { SharedBuffer = shared });
        var prompt = CacheTestKit.Prompt(25 * Chunk + 3, seed: 21);
        var reference = CacheTestKit.Greedy(model, prompt, cache: null, newTokens: 12);
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);

        var search = SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + 12, DoSample = false };
        var tokens = new List<int>();
        using (var generator = new KvGenerator(model, search, cache))
        {
            generator.AppendTokens(prompt);
            tokens.Add(generator.GenerateNextToken());
            var capture = generator.CaptureToCacheInBackground();
            while (!generator.IsDone) tokens.Add(generator.GenerateNextToken());
            Assert.Equal(25, await capture);
            Assert.Equal(0, generator.CaptureToCache()); // nothing new: the prompt's chunks count as cached, no full chunk was generated
        }
        Assert.Equal(reference.Tokens, tokens);

        var warm = CacheTestKit.Greedy(model, prompt, cache, newTokens: 12);
        Assert.Equal(25 * Chunk, warm.Restore.RestoredTokens);
        PrefixCacheParityTests.AssertSame(reference, warm, $"{modelName} shared={shared}");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ARewindAndANewPromptWaitForTheCaptureOfTheRowsTheyOverwrite(bool shared)
    {
        using var model = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = shared });
        var prompt = CacheTestKit.Prompt(25 * Chunk + 3, seed: 22);
        var other = CacheTestKit.Prompt(25 * Chunk + 3, seed: 23);
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var search = SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + 4, DoSample = false };
        using (var generator = new KvGenerator(model, search, cache))
        {
            generator.AppendTokens(prompt);
            generator.GenerateNextToken();
            var capture = generator.CaptureToCacheInBackground();
            generator.RewindTo(1);
            generator.AppendTokens(other[1..]); // rewrites rows 1.. of a shared buffer
            Assert.True(capture.IsCompletedSuccessfully);
            Assert.Equal(25, capture.Result);
        }

        var warm = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(25 * Chunk, warm.Restore.RestoredTokens);
        PrefixCacheParityTests.AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), warm, $"shared={shared}");
    }

    [Fact]
    public void HeldTensorsOutliveTheStepsThatReplaceThem()
    {
        using var model = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = false });
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = 64, DoSample = false });
        generator.AppendTokens(CacheTestKit.Prompt(20, seed: 3));
        generator.GenerateNextToken();
        using var hold = generator.Past.Hold();
        var before = hold.Tensors.Select(t => t.GetTensorMutableRawData().ToArray()).ToArray();
        for (int i = 0; i < 3; i++) generator.GenerateNextToken();
        Assert.NotSame(hold.Tensors[0], generator.Past.Tensor(0, value: false)); // the growing past was replaced by each step's presents
        for (int i = 0; i < before.Length; i++) Assert.Equal(before[i], hold.Tensors[i].GetTensorMutableRawData().ToArray());
    }

    [Fact]
    public void TextGeneratorCountsTheChunksItsBackgroundCaptureStored()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var tokenizer = new ModelTokenizer(model.Folder);
        using var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var prompt = CacheTestKit.Prompt(10 * Chunk + 3, seed: 5);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var first = new TextGenerator(model, tokenizer, cache).Generate(prompt, 20, search);
        Assert.Equal((prompt.Length + first.Tokens.Length - 1) / Chunk, first.CapturedChunks); // every full chunk computed (the last token is never run)
        var second = new TextGenerator(model, tokenizer, cache).Generate(prompt, 20, search);
        Assert.Equal(10 * Chunk, second.Restore.RestoredTokens);
        Assert.Equal(first.Tokens, second.Tokens);
        Assert.Equal(first.Tokens, new TextGenerator(model, tokenizer).Generate(prompt, 20, search).Tokens);
    }

    [Fact]
    public async Task AFailedCaptureReportsThroughItsTaskAndTheGeneratorGoesOn()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var cache = CacheTestKit.Open(model, directory: null, Chunk);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 3, seed: 6);
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + 8, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        var first = generator.GenerateNextToken();
        cache.Dispose();
        var capture = generator.CaptureToCacheInBackground();
        generator.GenerateNextToken();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => capture);
        generator.RewindTo(prompt.Length + 1); // waits for nothing, throws nothing
        Assert.Equal(first, generator.Sequence[prompt.Length]);
        Assert.Throws<ObjectDisposedException>(() => generator.CaptureToCache()); // the chunks still count as not stored
    }

    [Fact]
    public async Task WithoutACacheNothingIsCaptured()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var generator = new KvGenerator(model);
        generator.AppendTokens(CacheTestKit.Prompt(40, seed: 4));
        Assert.Equal(0, await generator.CaptureToCacheInBackground());
    }
}
