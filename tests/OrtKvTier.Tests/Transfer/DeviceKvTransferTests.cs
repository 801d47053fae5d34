using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Storage;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;
using OrtKvTier.Transfer;

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
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache-" + name), ChunkTokens = 16, DiskCapacityBytes = 16L << 20 };
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
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache-shared"), ChunkTokens = 16, DiskCapacityBytes = 16L << 20 };
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
        const int chunk = 16, tokens = 8 * chunk + 5;
        var options = new PrefixCacheOptions
        {
            Directory = _temp.Sub($"staged-{fromHostMemory}-{extraRows}"), ChunkTokens = chunk, DiskCapacityBytes = 40L << 20,
            HostBudgetBytes = fromHostMemory ? 64L << 20 : 0,
        };
        var fingerprint = new ModelFingerprint(new UInt128(0x5354414745, 1));
        var prompt = CacheTestKit.Prompt(tokens, seed: 42);
        using var source = OrtKvTensors.Allocate(layout, tokens);
        var random = new Random(9);
        foreach (var v in source.Values) random.NextBytes(v.GetTensorMutableRawData());
        var cache = new PrefixCache(fingerprint, layout, options);
        try
        {
            new PrefixCacheHook(cache, layout).Capture(prompt, source.Values);
            cache.Flush();
            if (!fromHostMemory)
            {
                cache.Dispose();
                cache = new PrefixCache(fingerprint, layout, options);
            }
            using var transfer = new DeviceKvTransfer(layout, device: null);
            Assert.True(cache.ChunkBytes > SlotPoolFormat.ChecksumBlockBytes);
            int expected = 8 * chunk;
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
                Assert.True(RowsEqual(layout, target.Values[t].GetTensorMutableRawData(), source.Values[t].GetTensorMutableRawData(), expected, tokens, target.Capacity), $"tensor {t}");
        }
        finally
        {
            cache.Dispose();
        }
    }

    [Fact]
    public void ADamagedChunkFoundAfterTheStagedCopiesEndsTheRestoreAtTheChunkBeforeIt()
    {
        var layout = LlamaLike();
        const int chunk = 16, tokens = 6 * chunk + 3;
        var options = new PrefixCacheOptions { Directory = _temp.Sub("staged-damaged"), ChunkTokens = chunk, DiskCapacityBytes = 40L << 20, HostBudgetBytes = 0 };
        var fingerprint = new ModelFingerprint(new UInt128(0x5354414745, 2));
        var prompt = CacheTestKit.Prompt(tokens, seed: 43);
        using var source = OrtKvTensors.Allocate(layout, tokens);
        var random = new Random(10);
        foreach (var v in source.Values) random.NextBytes(v.GetTensorMutableRawData());
        using (var writer = new PrefixCache(fingerprint, layout, options)) new PrefixCacheHook(writer, layout).Capture(prompt, source.Values);
        using var cache = new PrefixCache(fingerprint, layout, options);
        CacheTestKit.DamageSlotOf(cache.Disk!, cache.Chain.Keys(prompt.AsSpan(0, 6 * chunk))[4]);

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
            Assert.Equal([6 * chunk, 4 * chunk], asked); // staged try over all six, then the intact four
            Assert.Equal(4 * chunk, report.RestoredTokens);
            for (int t = 0; t < target!.Values.Length; t++)
                Assert.True(RowsEqual(layout, target.Values[t].GetTensorMutableRawData(), source.Values[t].GetTensorMutableRawData(), 4 * chunk, tokens, target.Capacity), $"tensor {t}");
            Assert.Equal(1, cache.Disk!.Pool.GetStats().Damaged);
        }
        finally
        {
            target?.Dispose();
        }
    }

    [Fact]
    public void ADamagedSlotHeaderStopsTheStagedRestoreBeforeReadingAndOnlyThatEntryIsDropped()
    {
        var layout = LlamaLike();
        const int chunk = 16, tokens = 6 * chunk + 3;
        var options = new PrefixCacheOptions { Directory = _temp.Sub("staged-header"), ChunkTokens = chunk, DiskCapacityBytes = 40L << 20, HostBudgetBytes = 0 };
        var fingerprint = new ModelFingerprint(new UInt128(0x5354414745, 3));
        var prompt = CacheTestKit.Prompt(tokens, seed: 45);
        using var source = OrtKvTensors.Allocate(layout, tokens);
        new Random(11).NextBytes(source.Values[0].GetTensorMutableRawData());
        using (var writer = new PrefixCache(fingerprint, layout, options)) new PrefixCacheHook(writer, layout).Capture(prompt, source.Values);
        using var cache = new PrefixCache(fingerprint, layout, options);
        var damaged = cache.Chain.Keys(prompt.AsSpan(0, 6 * chunk))[3];
        var path = Path.Combine(cache.Disk!.Pool.Directory, SlotPoolFormat.DataFileName);
        Span<byte> needle = stackalloc byte[16];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt128LittleEndian(needle, damaged.Value);
        long at = File.ReadAllBytes(path).AsSpan().IndexOf(needle);
        Assert.True(at > 0);
        SlotFileDamage.FlipAt(path, at);

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
            Assert.Equal([6 * chunk, 3 * chunk], asked);
            Assert.Equal(3 * chunk, report.RestoredTokens);
            Assert.True(RowsEqual(layout, target!.Values[0].GetTensorMutableRawData(), source.Values[0].GetTensorMutableRawData(), 3 * chunk, tokens, target.Capacity));
            var stats = cache.Disk.Pool.GetStats();
            Assert.Equal(1, stats.Damaged); // the readings begun for the other chunks were let go, not judged
            Assert.Equal(5, stats.Entries);
        }
        finally
        {
            target?.Dispose();
        }
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

        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = 16 });
        using var transfer = new DeviceKvTransfer(model.Layout, device: null);
        int stored = transfer.CaptureFrom(past, generator.Past.Capacity, prompt.Length,
            view => PrefixTransfer.Capture(cache, prompt, prompt.Length, view, [], firstChunk: 0));
        Assert.Equal(3, stored);

        // What was stored is what the model computed: a restore from it gives a full prefill's logits.
        var restored = CacheTestKit.Greedy(model, prompt, cache);
        Assert.Equal(48, restored.Restore.RestoredTokens);
        Assert.True(restored.LogitsBitwiseEqual(CacheTestKit.Greedy(model, prompt, cache: null)));
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
