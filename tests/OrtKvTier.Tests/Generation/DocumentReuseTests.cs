using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tensors;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Generation;

/// <summary>
/// Documents restored at any position: keys moved exactly (to rounding) on every rotary variant, documents served from
/// their own cache entries in any order, and nothing approximate ever stored under a prompt's exact keys.
/// </summary>
public sealed class DocumentReuseTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();

    public static TheoryData<RotaryPlacement, IoDType, bool> Variants() => new()
    {
        { RotaryPlacement.InAttention, IoDType.Fp32, false },
        { RotaryPlacement.InAttention, IoDType.Fp16, true },
        { RotaryPlacement.PositionIds, IoDType.Fp32, true },
        { RotaryPlacement.PositionIds, IoDType.Fp16, false },
    };

    private static float[] Floats(KvModel model, ReadOnlySpan<byte> bytes) => model.Layout.ElementSize == 2
        ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray()
        : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();

    /// <summary>Layer 0's keys depend on a token and its position only: a document computed at 0 and moved to p equals one computed at p.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void KeysMovedFromPositionZeroEqualKeysComputedThere(RotaryPlacement rotary, IoDType dtype, bool shared)
    {
        var folder = TestPaths.Build(_temp.Sub("model"), ModelShape.Tiny with { Rotary = rotary, DType = dtype, SharedBuffer = shared, MaxLength = 512, Seed = 31 });
        using var model = KvModel.Load(folder);
        Assert.Null(model.DocumentReuseRefusal);
        var rotation = model.Rotary!;
        var document = CacheTestKit.Prompt(40, seed: 1);
        var before = CacheTestKit.Prompt(300, seed: 2);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        using var alone = new KvGenerator(model, search);
        alone.AppendTokens(document);
        using var there = new KvGenerator(model, search);
        there.AppendTokens([.. before, .. document]);

        var layout = model.Layout;
        int row = (int)layout.BytesPerHeadToken;
        double worst = 0;
        for (int h = 0; h < layout.KvHeads; h++)
        {
            var moved = alone.Past.TensorBytes(0, value: false).Slice(h * alone.Past.Capacity * row, document.Length * row).ToArray();
            KeyRotation.Rotate(moved, document.Length, layout.HeadSize, layout.ElementSize, rotation, before.Length);
            var direct = there.Past.TensorBytes(0, value: false).Slice((h * there.Past.Capacity + before.Length) * row, document.Length * row);
            var (a, b) = (Floats(model, moved), Floats(model, direct));
            for (int i = 0; i < a.Length; i++) worst = Math.Max(worst, Math.Abs(a[i] - b[i]) / Math.Max(1, Math.Abs(b[i])));
        }
        // fp16 keys: a few units of fp16's last place (2^-11 relative) from rounding twice; fp32: float rounding of the tables.
        Assert.True(worst < (dtype == IoDType.Fp16 ? 4e-3 : 1e-4), $"moved keys differ from computed ones by {worst} (relative)");
        Assert.Throws<ArgumentOutOfRangeException>(() => KeyRotation.Rotate(new byte[row], 1, layout.HeadSize, layout.ElementSize, rotation, rotation.Positions));
    }

    [Fact]
    public void DocumentsInAnyOrderComeFromTheirOwnEntriesAndNothingMovedIsStoredUnderThePromptsKeys()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var cache = CacheTestKit.Open(model, _temp.Sub("cache"), Chunk);
        var system = CacheTestKit.Prompt(2 * Chunk, seed: 10);
        var a = CacheTestKit.Prompt(3 * Chunk + 5, seed: 11);
        var b = CacheTestKit.Prompt(2 * Chunk + 9, seed: 12);
        var question = CacheTestKit.Prompt(7, seed: 13);
        var search = SearchOptions.FromConfig(model) with { DoSample = false, MaxLength = 256 };

        (DocumentPlacement[] Placed, KvGenerator Generator) Ask(int[][] documents)
        {
            var generator = new KvGenerator(model, search, cache);
            generator.AppendTokens(system);
            var placed = documents.Select(d => generator.AppendDocument(d, recompute: 4)).ToArray();
            generator.AppendTokens(question);
            for (int i = 0; i < 4; i++) generator.GenerateNextToken();
            generator.CaptureToCache();
            return (placed, generator);
        }

        var (first, g1) = Ask([a, b]);
        using (g1)
        {
            Assert.All(first, p => Assert.Equal(0, p.CachedTokens)); // computed alone, stored for next time
            Assert.Equal(system.Length, first[0].Offset);
            Assert.Equal(system.Length + a.Length, first[1].Offset);
            Assert.Equal(a.Length - 5, first[0].MovedTokens); // the first 4 and the last computed fresh
            Assert.Equal(first[0].Offset, first[0].Delta);
        }
        var (second, g2) = Ask([b, a]);
        using (g2)
        {
            // Each document's full chunks come from its own entries, wherever it stood before.
            Assert.Equal(2 * Chunk, second[0].CachedTokens);
            Assert.Equal(3 * Chunk, second[1].CachedTokens);
            Assert.Equal(system.Length + b.Length, second[1].Offset);
            Assert.Equal(system.Length + b.Length + a.Length + question.Length + 4, g2.Sequence.Count);
        }
        // The prompt's own keys hold the exact system prompt only: a new request for [system, b, a, question] restores no more.
        using var exact = new KvGenerator(model, search, cache);
        exact.AppendTokens([.. system, .. b, .. a, .. question]);
        Assert.Equal(system.Length, exact.LastRestore.RestoredTokens);
    }

    [Fact]
    public void WithoutACacheDocumentReuseIsRefusedSayingWhatItNeeds()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var generator = new KvGenerator(model);
        generator.AppendTokens([5, 6, 7]);
        Assert.Contains("needs a cache", Assert.Throws<InvalidOperationException>(() => generator.AppendDocument([8, 9, 10])).Message);
    }

    public void Dispose() => _temp.Dispose();
}
