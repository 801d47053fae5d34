using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

/// <summary>Our IOBinding loop must produce exactly GenAI's greedy tokens on the same folder.</summary>
public sealed class GenAiParityTests : IDisposable
{
    private readonly TempDir _temp = new();

    public static TheoryData<string, bool, string> Cases()
    {
        // columns: shipped model, shared buffer, prompt
        var data = new TheoryData<string, bool, string>();
        foreach (var model in new[] { "tiny", "tiny-fp16" })
            foreach (var shared in new[] { false, true })
                foreach (var prompt in new[] { "Hello", "The quick brown fox jumps over the lazy dog.", "for (int i = 0; i < n; i++) { sum += values[i]; }\nWhat is the capital of France?" })
                    data.Add(model, shared, prompt);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GreedyTokensEqualGenAiGenerator(string shipped, bool shared, string prompt)
    {
        var folder = TestPaths.WithSharedBuffer(TestPaths.Shipped(shipped), _temp.Sub("m"), shared);
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(folder);
        Assert.Equal(shared, model.Layout.SharedBuffer);
        var tokens = tokenizer.Encode(prompt);
        int maxLength = tokens.Length + 40;

        var ours = OurTokens.Greedy(model, tokens, maxLength);
        var theirs = GenAiReference.GreedyTokens(folder, tokens, maxLength);

        Assert.Equal(theirs, ours);
        Assert.NotEmpty(ours);
    }

    public static TheoryData<int, int, int, int, int, IoDType> OddShapes() => new()
    {
        // layers, heads, kv heads, head size, vocab, dtype
        { 1, 2, 1, 32, 300, IoDType.Fp32 },
        { 3, 6, 3, 16, 700, IoDType.Fp32 },
        { 2, 4, 4, 48, 1000, IoDType.Fp16 },
        { 4, 8, 2, 16, 2000, IoDType.Fp16 },
    };

    [Theory]
    [MemberData(nameof(OddShapes))]
    public void AnyBuiltShapeMatchesGenAi(int layers, int heads, int kvHeads, int headSize, int vocab, IoDType dtype)
    {
        foreach (var shared in new[] { false, true })
        {
            var shape = new ModelShape
            {
                Layers = layers, Heads = heads, KvHeads = kvHeads, HeadSize = headSize, Hidden = heads * headSize,
                Intermediate = 3 * heads * headSize, Vocab = vocab, MaxLength = 128, DType = dtype, SharedBuffer = shared, Seed = layers * 7 + vocab,
            };
            var folder = TestPaths.Build(_temp.Sub($"odd-{shared}"), shape);
            using var model = KvModel.Load(folder);
            Assert.Equal(layers, model.Layout.Layers);
            Assert.Equal(kvHeads, model.Layout.KvHeads);
            Assert.Equal(headSize, model.Layout.HeadSize);
            Assert.Equal(vocab, model.VocabSize);
            using var tokenizer = new ModelTokenizer(folder);
            var prompt = tokenizer.Encode("Once upon a time there was a little model.");
            Assert.Equal(GenAiReference.GreedyTokens(folder, prompt, prompt.Length + 24), OurTokens.Greedy(model, prompt, prompt.Length + 24));
        }
    }

    public void Dispose() => _temp.Dispose();
}
