using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Storage;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tests.Transfer;

/// <summary>The staged restore path (slots → staging → target past tensors through OrtEnv.CopyTensors), run with host memory as the target.</summary>
public sealed class DeviceKvTransferTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Theory]
    [InlineData("tiny")]
    [InlineData("tiny-fp16")]
    public void AStagedRestoreHoldsExactlyTheRowsADirectRestoreWrites(string name)
    {
        using var model = KvModel.Load(TestPaths.Shipped(name));
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache-" + name), ChunkTokens = 16, DiskCapacityBytes = 16L << 20, AlwaysRestore = true };
        var prompt = CacheTestKit.Prompt(5 * 16 + 7, seed: 40);
        using (var cache = PrefixCache.Open(model, options)) CacheTestKit.Greedy(model, prompt, cache);

        using var reopened = PrefixCache.Open(model, options);
        using var transfer = new DeviceKvTransfer(model.Layout, device: null);
        var (past, report, _) = transfer.Restore(reopened, prompt);
        try
        {
            Assert.False(transfer.OnDevice);
            Assert.Equal(80, report.RestoredTokens);
            Assert.All(report.ChunkTiers, t => Assert.Equal("disk", t));
            Assert.Equal(model.Layout.Layers * 2, past.Length);
            Assert.All(past, v => Assert.Equal([1, model.Layout.KvHeads, 80, model.Layout.HeadSize], v.GetTensorTypeAndShape().Shape));

            // The same prefix computed by the model: its first 80 rows per head are what the staged restore produced.
            using var generator = new OrtKvTier.Generation.KvGenerator(model);
            generator.AppendTokens(prompt[..81]);
            for (int layer = 0; layer < model.Layout.Layers; layer++)
                for (int v = 0; v < 2; v++)
                    Assert.True(RowsEqual(model.Layout, past[2 * layer + v].GetTensorMutableRawData(), generator.Past.TensorBytes(layer, v == 1), 80, generator.Past.Capacity),
                        $"layer {layer} {(v == 1 ? "value" : "key")}");
        }
        finally
        {
            foreach (var v in past) v.Dispose();
        }
    }

    [Fact]
    public void RestoringIntoSharedBufferTargetsFillsTheFirstRowsOfEveryHeadAndNothingElse()
    {
        using var model = KvModel.Load(TestPaths.Shipped("tiny-fp16"));
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache-shared"), ChunkTokens = 16, DiskCapacityBytes = 16L << 20, AlwaysRestore = true };
        var prompt = CacheTestKit.Prompt(3 * 16 + 5, seed: 41);
        using (var cache = PrefixCache.Open(model, options)) CacheTestKit.Greedy(model, prompt, cache);

        using var reopened = PrefixCache.Open(model, options);
        using var transfer = new DeviceKvTransfer(model.Layout, device: null);
        const int capacity = 100;
        var targets = transfer.AllocatePast(capacity);
        try
        {
            foreach (var t in targets) t.GetTensorMutableRawData().Fill(0xA5);
            int? asked = null;
            var (report, _) = transfer.RestoreInto(reopened, prompt, computedTokens: 0, rows =>
            {
                asked = rows;
                return (targets, capacity);
            });
            Assert.Equal(48, report.RestoredTokens);
            Assert.Equal(48, asked);

            using var generator = new OrtKvTier.Generation.KvGenerator(model);
            generator.AppendTokens(prompt[..49]);
            int row = model.Layout.BytesPerHeadToken;
            for (int layer = 0; layer < model.Layout.Layers; layer++)
                for (int v = 0; v < 2; v++)
                {
                    var bytes = targets[2 * layer + v].GetTensorMutableRawData();
                    Assert.True(RowsEqual(model.Layout, bytes, generator.Past.TensorBytes(layer, v == 1), 48, generator.Past.Capacity, restoredCapacity: capacity));
                    for (int h = 0; h < model.Layout.KvHeads; h++)
                        Assert.All(bytes.Slice((h * capacity + 48) * row, (capacity - 48) * row).ToArray(), b => Assert.Equal(0xA5, b));
                }

            // Nothing more to restore than what is already computed: the targets are not asked for.
            asked = null;
            var (none, _) = transfer.RestoreInto(reopened, prompt, computedTokens: 48, rows =>
            {
                asked = rows;
                return (targets, capacity);
            });
            Assert.Equal(0, none.RestoredTokens);
            Assert.Null(asked);
        }
        finally
        {
            foreach (var v in targets) v.Dispose();
        }
    }

    /// <summary>Chunks of 2 MiB (two checksum blocks) restore with staging and copies overlapped, from disk or host memory, into exact or larger targets.</summary>
    [Theory]
    [InlineData(false, 0)]
    [InlineData(true, 0)]
    [InlineData(false, 40)]
    public void ChunksOfSeveralBlocksRestoreInStagesWithTheCopiesOverlapped(bool fromHostMemory, int extraRows)
    {
        var layout = LlamaLike();
        var options = StagedOptions($"staged-{fromHostMemory}-{extraRows}") with { HostBudgetBytes = fromHostMemory ? 64L << 20 : 0 };
        var cache = new PrefixCache(StagedFingerprint, layout, options);
        var (prompt, source) = StoreRandomPrefix(cache, 8 * Chunk + 5, seed: 42);
        try
        {
            if (!fromHostMemory)
            {
                cache.Dispose(); // reopened: an empty host tier, every chunk read from disk
                cache = new PrefixCache(StagedFingerprint, layout, options);
            }
            using var transfer = new DeviceKvTransfer(layout, device: null);
            Assert.True(cache.ChunkBytes > StoredFormats.SealBlockBytes);
            int expected = 8 * Chunk;
            using var target = OrtKvTensors.Allocate(layout, expected + extraRows);
            int prepared = 0;
            var (report, _) = transfer.RestoreInto(cache, prompt, computedTokens: 0, rows =>
            {
                Assert.Equal(expected, rows);
                prepared++;
                return (target.Values, target.Capacity);
            });
            Assert.Equal(1, prepared); // one staged pass, no fallback
            Assert.Equal(expected, report.RestoredTokens);
            Assert.All(report.ChunkTiers, t => Assert.Equal(fromHostMemory ? "host" : "disk", t));
            for (int t = 0; t < target.Values.Length; t++)
                Assert.True(RowsEqual(layout, target.Values[t].GetTensorMutableRawData(), source.Values[t].GetTensorMutableRawData(), expected, source.Capacity, target.Capacity), $"tensor {t}");
        }
        finally
        {
            cache.Dispose();
            source.Dispose();
        }
    }

    /// <summary>
    /// A damaged payload is found when the staged copies are done, a damaged slot header by the lookup, before any block is
    /// read; either way the intact chain before that chunk is restored, and only that entry is dropped.
    /// </summary>
    [Theory]
    [InlineData(false, 4)]
    [InlineData(true, 3)]
    public void ADamagedChunkEndsTheStagedRestoreAtTheChunkBeforeIt(bool inHeader, int damagedChunk)
    {
        var layout = LlamaLike();
        var options = StagedOptions($"staged-damaged-{inHeader}") with { HostBudgetBytes = 0 };
        (int[] Prompt, OrtKvTensors Source) stored;
        using (var writer = new PrefixCache(StagedFingerprint, layout, options)) stored = StoreRandomPrefix(writer, 6 * Chunk + 3, seed: 43);
        var (prompt, source) = stored;
        using var _ = source;
        using var cache = new PrefixCache(StagedFingerprint, layout, options);
        var key = cache.Chain.Keys(prompt.AsSpan(0, 6 * Chunk))[damagedChunk];
        if (inHeader) CacheTestKit.DamageSlotHeaderOf(cache.Disk!, key);
        else CacheTestKit.DamageSlotOf(cache.Disk!, key);

        using var transfer = new DeviceKvTransfer(layout, device: null);
        var asked = new List<int>();
        OrtKvTensors? target = null;
        try
        {
            var (report, _) = transfer.RestoreInto(cache, prompt, computedTokens: 0, rows =>
            {
                asked.Add(rows);
                target?.Dispose();
                target = OrtKvTensors.Allocate(layout, rows);
                return (target.Values, target.Capacity);
            });
            // A damaged payload: the staged try over all six, then the intact chain. A damaged header is found by the lookup
            // (each slot's header is checked when its read begins), so the past is prepared once, for the intact chain.
            Assert.Equal(inHeader ? [damagedChunk * Chunk] : [6 * Chunk, damagedChunk * Chunk], asked);
            Assert.Equal(damagedChunk * Chunk, report.RestoredTokens);
            for (int t = 0; t < target!.Values.Length; t++)
                Assert.True(RowsEqual(layout, target.Values[t].GetTensorMutableRawData(), source.Values[t].GetTensorMutableRawData(), damagedChunk * Chunk, source.Capacity, target.Capacity), $"tensor {t}");
            var stats = cache.Disk!.Pool.GetStats();
            Assert.Equal(1, stats.Damaged); // reads begun for the other chunks were let go or verified, not dropped
            Assert.Equal(5, stats.Entries);
        }
        finally
        {
            target?.Dispose();
        }
    }

    private const int Chunk = 16;

    private static readonly ModelFingerprint StagedFingerprint = new(new UInt128(0x5354414745, 1));

    private PrefixCacheOptions StagedOptions(string name) => new() { Directory = _temp.Sub(name), ChunkTokens = Chunk, DiskCapacityBytes = 40L << 20 };

    /// <summary>Random keys and values for a prompt of <paramref name="tokens"/> tokens, captured into <paramref name="cache"/>.</summary>
    private static (int[] Prompt, OrtKvTensors Source) StoreRandomPrefix(PrefixCache cache, int tokens, int seed)
    {
        var prompt = CacheTestKit.Prompt(tokens, seed);
        var source = OrtKvTensors.Allocate(cache.Layout, tokens);
        var random = new Random(seed);
        foreach (var v in source.Values) random.NextBytes(v.GetTensorMutableRawData());
        new PrefixCacheHook(cache, cache.Layout).Capture(prompt, source.Values);
        return (prompt, source);
    }

    [Fact]
    public void ACaptureThroughTheStagingStoresTheRowsOfTheTargetTensors()
    {
        using var model = KvModel.Load(TestPaths.Shipped("tiny-fp16"));
        var prompt = CacheTestKit.Prompt(3 * 16 + 4, seed: 44);
        using var generator = new KvGenerator(model);
        generator.AppendTokens(prompt);
        generator.GetLogits();
        var past = Enumerable.Range(0, model.Layout.Layers * 2).Select(i => generator.Past.Tensor(i / 2, i % 2 == 1)).ToArray();

        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = 16, AlwaysRestore = true });
        using var transfer = new DeviceKvTransfer(model.Layout, device: null);
        int stored = transfer.CaptureFrom(past, generator.Past.Capacity, prompt.Length,
            view => ChunkCapture.Capture(cache, cache.Chain, prompt, prompt.Length, view, [], firstChunk: 0));
        Assert.Equal(3, stored);

        // What was stored is what the model computed: a restore from it gives a full prefill's logits.
        var restored = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(48, restored.Restore.RestoredTokens);
        Assert.True(restored.LogitsBitwiseEqual(CacheTestKit.Greedy(model, prompt, cache: null)));
    }

    [Fact]
    public void ARestoreDoesNotWaitForACaptureInProgress()
    {
        using var model = KvModel.Load(TestPaths.Shipped("tiny-fp16"));
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = 16, AlwaysRestore = true });
        var prompt = CacheTestKit.Prompt(3 * 16 + 4, seed: 45);
        CacheTestKit.Greedy(model, prompt, cache);
        using var generator = new KvGenerator(model);
        generator.AppendTokens(prompt);
        generator.GetLogits();

        using var transfer = new DeviceKvTransfer(model.Layout, device: null);
        using var capturing = new ManualResetEventSlim();
        using var restored = new ManualResetEventSlim();
        var capture = Task.Run(() => transfer.CaptureFrom(generator.Past.Tensors(), generator.Past.Capacity, prompt.Length, _ =>
        {
            capturing.Set();
            return restored.Wait(TimeSpan.FromSeconds(20)); // holds the capture staging until the restore is done
        }));
        Assert.True(capturing.Wait(TimeSpan.FromSeconds(20)));
        var (past, report, _) = transfer.Restore(cache, prompt);
        restored.Set();
        foreach (var v in past) v.Dispose();
        Assert.Equal(48, report.RestoredTokens);
        Assert.True(capture.Result, "the restore finished only after the capture let go of its staging");
    }

    /// <summary>32 layers × 8 kv heads × 128, fp16: 128 KiB per token.</summary>
    private static KvLayout LlamaLike()
    {
        var layers = Enumerable.Range(0, 32).ToArray();
        return new KvLayout
        {
            Layers = 32, KvHeads = 8, HeadSize = 128, ElementType = KvElementType.Float16, SharedBuffer = false, MaxLength = 4096,
            PastKeyNames = layers.Select(l => $"past_key_values.{l}.key").ToArray(), PastValueNames = layers.Select(l => $"past_key_values.{l}.value").ToArray(),
            PresentKeyNames = layers.Select(l => $"present.{l}.key").ToArray(), PresentValueNames = layers.Select(l => $"present.{l}.value").ToArray(),
        };
    }

    private static bool RowsEqual(KvLayout layout, ReadOnlySpan<byte> restored, ReadOnlySpan<byte> computed, int rows, int computedCapacity, int? restoredCapacity = null)
    {
        int row = layout.BytesPerHeadToken;
        for (int h = 0; h < layout.KvHeads; h++)
            if (!restored.Slice(h * (restoredCapacity ?? rows) * row, rows * row).SequenceEqual(computed.Slice(h * computedCapacity * row, rows * row))) return false;
        return true;
    }

    public void Dispose() => _temp.Dispose();
}
