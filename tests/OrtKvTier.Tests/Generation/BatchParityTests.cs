using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

/// <summary>
/// Rows of a <see cref="GenerationBatch"/> give the tokens each request gets alone: eight different prompts (different
/// lengths, so the rows sit at different positions in every step), joining at once and at staggered times, greedy and
/// seeded sampling, on both KV modes and every folder variant the builder writes.
/// </summary>
public sealed class BatchParityTests : IDisposable
{
    private readonly TempDir _temp = new();

    private static readonly string[] Prompts =
    [
        "Hello",
        "The quick brown fox jumps over the lazy dog.",
        "for (int i = 0; i < n; i++) { sum += values[i]; }",
        "What is the capital of France? Paris is the capital of France.",
        "A",
        "Once upon a time there was a cache that never forgot a prefix, and it served many users at once without mixing their words.",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 13",
        "zzz",
    ];

    public static TheoryData<string, bool> ShippedModels() => new()
    {
        { "tiny", false }, { "tiny", true }, { "tiny-fp16", false }, { "tiny-fp16", true },
    };

    [Theory]
    [MemberData(nameof(ShippedModels))]
    public void EightPromptsBatchedGiveTheirTokensAloneGreedyAndSeeded(string shipped, bool shared)
    {
        var folder = TestPaths.WithSharedBuffer(TestPaths.Shipped(shipped), _temp.Sub("m"), shared);
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(folder);
        var prompts = Prompts.Select(tokenizer.Encode).ToArray();
        foreach (var sample in new[] { false, true })
        {
            var searches = prompts.Select((p, i) => SearchOptions.FromConfig(model) with
            {
                MaxLength = p.Length + 24 + i, DoSample = sample, Temperature = 0.9, TopK = 20, Seed = (ulong)(1000 + i),
            }).ToArray();
            var alone = prompts.Select((p, i) => OurTokens.Generate(model, p, searches[i])).ToArray();
            using var batch = new GenerationBatch(model, new GenerationBatchOptions { MaxRows = 8, MaxPrefillTokensPerStep = 7 });
            var batched = RunTogether(batch, prompts, searches, cache: null);
            for (int i = 0; i < prompts.Length; i++)
                Assert.True(alone[i].SequenceEqual(batched[i]), $"row {i} ({(sample ? "seeded" : "greedy")}): alone [{string.Join(',', alone[i])}], batched [{string.Join(',', batched[i])}]");
            if (!sample)
                for (int i = 0; i < prompts.Length; i++) Assert.Equal(GenAiReference.GreedyTokens(folder, prompts[i], searches[i].MaxLength), batched[i]);
            Assert.True(batch.LargestStep > 1, $"the rows never decoded together (largest step {batch.LargestStep})");
        }
    }

    [Theory]
    [MemberData(nameof(FolderVariantTests.Variants), MemberType = typeof(FolderVariantTests))]
    public void EveryFolderVariantBatchedGivesTheTokensAloneWithTheCache(RotaryPlacement rotary, string? externalData, IoDType dtype, bool shared)
    {
        var folder = TestPaths.Build(_temp.Sub("model"), ModelShape.Tiny with
        {
            Rotary = rotary, ExternalDataFile = externalData, DType = dtype, SharedBuffer = shared, MaxLength = 256, Seed = 77,
        });
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(folder);
        var system = string.Join(' ', Enumerable.Repeat("You answer briefly.", 4)) + " ";
        var prompts = Prompts.Select(p => tokenizer.Encode(system + p)).ToArray();
        var searches = prompts.Select(p => SearchOptions.FromConfig(model) with { MaxLength = p.Length + 16, DoSample = false }).ToArray();
        var alone = prompts.Select((p, i) => OurTokens.Generate(model, p, searches[i])).ToArray();
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = _temp.Sub("cache"), ChunkTokens = 8, DiskCapacityBytes = 8L << 20, AlwaysRestore = true });
        using var batch = new GenerationBatch(model, new GenerationBatchOptions { MaxRows = 4, MaxPrefillTokensPerStep = 5 });
        var restored = new int[prompts.Length];
        var batched = RunTogether(batch, prompts, searches, cache, restored);
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], batched[i]);
        // Every row but the first found the shared system prompt (the rows append their prompts one at a time).
        Assert.True(restored.Count(r => r >= 16) >= prompts.Length - 1, $"restored: {string.Join(',', restored)}");
    }

    /// <summary>Each prompt on its own thread in the batch, starting a little apart; the generated tokens of each.</summary>
    internal static int[][] RunTogether(GenerationBatch batch, int[][] prompts, SearchOptions[] searches, PrefixCache? cache, int[]? restored = null)
    {
        var results = new int[prompts.Length][];
        var errors = new Exception?[prompts.Length];
        var threads = prompts.Select((prompt, i) => new Thread(() =>
        {
            try
            {
                Thread.Sleep(i % 3 * 5);
                using var generator = batch.Join(searches[i], cache);
                generator.AppendTokens(prompt);
                if (restored is not null) restored[i] = generator.LastRestore.RestoredTokens;
                while (!generator.IsDone) generator.GenerateNextToken();
                results[i] = generator.Sequence.Skip(prompt.Length).ToArray();
            }
            catch (Exception e)
            {
                errors[i] = e;
            }
        })).ToList();
        foreach (var t in threads) t.Start();
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromMinutes(2)), "a batched generation did not finish in 2 minutes");
        Assert.All(errors, e => Assert.Null(e));
        return results;
    }

    public void Dispose() => _temp.Dispose();
}
