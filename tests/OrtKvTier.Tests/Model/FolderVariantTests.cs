using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Model;

/// <summary>
/// Every folder variant the builder writes (rotary fused into attention or in RotaryEmbedding nodes fed by
/// position_ids; weights inside the model or in an external-data file of any name; fp16 and fp32; growing and
/// shared-buffer KV) gives GenAI's greedy tokens: without the cache, after a restore in the same process, and
/// after a restore in a second process.
/// </summary>
public sealed class FolderVariantTests : IDisposable
{
    private const int ChunkTokens = 16;
    private readonly TempDir _temp = new();

    public static TheoryData<RotaryPlacement, string?, IoDType, bool> Variants() => new()
    {
        // rotary placement, external-data file, dtype, shared buffer
        { RotaryPlacement.InAttention, null, IoDType.Fp32, false },
        { RotaryPlacement.PositionIds, null, IoDType.Fp32, false },
        { RotaryPlacement.PositionIds, null, IoDType.Fp16, true },
        { RotaryPlacement.PositionIds, "model.onnx_data", IoDType.Fp16, false },
        { RotaryPlacement.PositionIds, "weights.bin", IoDType.Fp32, true },
        { RotaryPlacement.InAttention, "model.onnx.data", IoDType.Fp16, true },
        { RotaryPlacement.InAttention, "model.onnx_data", IoDType.Fp32, false },
    };

    [Theory]
    [MemberData(nameof(Variants))]
    public void GreedyTokensEqualGenAiWithoutCacheAfterARestoreAndInASecondProcess(RotaryPlacement rotary, string? externalData, IoDType dtype, bool shared)
    {
        var folder = TestPaths.Build(_temp.Sub("model"), ModelShape.Tiny with
        {
            Rotary = rotary, ExternalDataFile = externalData, DType = dtype, SharedBuffer = shared, MaxLength = 256, Seed = 77,
        });
        if (externalData is not null) Assert.True(new FileInfo(Path.Combine(folder, externalData)).Length > new FileInfo(Path.Combine(folder, "model.onnx")).Length);
        using var model = KvModel.Load(folder);
        Assert.Equal(rotary == RotaryPlacement.PositionIds ? "position_ids" : null, model.Names.PositionIds);
        using var tokenizer = new ModelTokenizer(folder);
        var prompt = tokenizer.Encode(string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 5)));
        int maxLength = prompt.Length + 16;
        var genAi = GenAiReference.GreedyTokens(folder, prompt, maxLength);

        // 1. No cache; then rewound into the generated tokens and generated again (positions continue from the kept length).
        Assert.Equal(genAi, OurTokens.Greedy(model, prompt, maxLength));
        using (var rewound = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = maxLength, DoSample = false }))
        {
            rewound.AppendTokens(prompt);
            for (int i = 0; i < 8; i++) rewound.GenerateNextToken();
            rewound.RewindTo(prompt.Length + 3);
            while (!rewound.IsDone) rewound.GenerateNextToken();
            Assert.Equal(genAi, rewound.Sequence.Skip(prompt.Length));
        }

        // 2. Captured by one generator, restored by the next in this process.
        var cacheDir = _temp.Sub("cache");
        var options = new PrefixCacheOptions { Directory = cacheDir, ChunkTokens = ChunkTokens, DiskCapacityBytes = 8L << 20, AlwaysRestore = true };
        using (var cache = PrefixCache.Open(model, options))
        {
            Assert.Equal(genAi, Generate(model, cache, prompt, maxLength, out int first));
            Assert.Equal(0, first);
            Assert.Equal(genAi, Generate(model, cache, prompt, maxLength, out int restored));
            Assert.True(restored >= prompt.Length / ChunkTokens * ChunkTokens - ChunkTokens, $"restored {restored} of {prompt.Length}");
        }

        // 3. Restored from disk by another process.
        var run = ChildProcess.Console("generate", "--model", folder, "--tokens", string.Join(',', prompt), "--max-new-tokens", "16", "--json",
            "--chunk-tokens", ChunkTokens.ToString(), "--cache-dir", cacheDir, "--cache-size", "8MiB");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var json = JsonDocument.Parse(run.StdOut).RootElement;
        Assert.True(json.GetProperty("cached_tokens").GetInt32() > 0, run.StdOut);
        Assert.Equal(genAi, json.GetProperty("tokens").EnumerateArray().Select(t => t.GetInt32()));
    }

    private static int[] Generate(KvModel model, PrefixCache cache, int[] prompt, int maxLength, out int restored)
    {
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = maxLength, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        restored = generator.LastRestore.RestoredTokens;
        while (!generator.IsDone) generator.GenerateNextToken();
        generator.CaptureToCache();
        cache.Flush();
        return generator.Sequence.Skip(prompt.Length).ToArray();
    }

    public void Dispose() => _temp.Dispose();
}
