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

    public static TheoryData<RotaryPlacement, IoDType, bool, string?> Variants() => new()
    {
        // rotary placement, dtype, shared buffer, external-data file (the rotary tables in it too)
        { RotaryPlacement.InAttention, IoDType.Fp32, false, null },
        { RotaryPlacement.InAttention, IoDType.Fp16, true, null },
        { RotaryPlacement.PositionIds, IoDType.Fp32, true, null },
        { RotaryPlacement.PositionIds, IoDType.Fp16, false, null },
        { RotaryPlacement.InAttention, IoDType.Fp16, false, "model.onnx_data" },
        { RotaryPlacement.PositionIds, IoDType.Fp32, true, "weights.bin" },
    };

    private static float[] Floats(KvModel model, ReadOnlySpan<byte> bytes) => model.Layout.ElementSize == 2
        ? System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray()
        : System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).ToArray();

    /// <summary>Layer 0's keys depend on a token and its position only: a document computed at 0 and moved to p equals one computed at p.</summary>
    [Theory]
    [MemberData(nameof(Variants))]
    public void KeysMovedFromPositionZeroEqualKeysComputedThere(RotaryPlacement rotary, IoDType dtype, bool shared, string? externalData)
    {
        var folder = TestPaths.Build(_temp.Sub("model"), ModelShape.Tiny with { Rotary = rotary, DType = dtype, SharedBuffer = shared, MaxLength = 512, Seed = 31, ExternalDataFile = externalData });
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

    /// <summary>Graphs whose keys cannot be moved exactly are refused, saying why (read from the graph, without loading it).</summary>
    [Fact]
    public void ModelsWithoutReadableRotaryOrThatSwitchTablesAreRefusedNamingWhy()
    {
        string Refusal(Action<OrtKvTier.ModelBuilder.Onnx.GraphBuilder> build)
        {
            var graph = new OrtKvTier.ModelBuilder.Onnx.GraphBuilder();
            build(graph);
            var path = _temp.File($"graph-{Guid.NewGuid():N}.onnx", "");
            File.WriteAllBytes(path, graph.ToModel("g"));
            Assert.Null(RotaryPositions.From(OnnxModelFile.Read(path), 16, out var why));
            return why!;
        }
        string Rotary(OrtKvTier.ModelBuilder.Onnx.GraphBuilder g, string table = "cos_cache")
        {
            var x = g.Input("x", OrtKvTier.ModelBuilder.Onnx.OnnxType.Float, 1, 1, 16);
            var positions = g.Input("position_ids", OrtKvTier.ModelBuilder.Onnx.OnnxType.Int64, 1, 1);
            var cos = g.Weight(table, OrtKvTier.ModelBuilder.Onnx.OnnxType.Float, new float[64 * 8], 64, 8);
            var sin = g.Weight(table + "_sin", OrtKvTier.ModelBuilder.Onnx.OnnxType.Float, new float[64 * 8], 64, 8);
            return g.Node("RotaryEmbedding", [x, positions, cos, sin], domain: "com.microsoft")[0];
        }
        Assert.Contains("no rotary position embedding", Refusal(g => g.Op("Relu", g.Input("x", OrtKvTier.ModelBuilder.Onnx.OnnxType.Float, 1, 16))));
        Assert.Contains("If or Loop", Refusal(g => g.Op("If", g.Op("Greater", Rotary(g), Rotary(g, "other")))));
        Assert.Contains("different tables", Refusal(g => g.Op("Add", Rotary(g), Rotary(g, "long_cos_cache"))));
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
