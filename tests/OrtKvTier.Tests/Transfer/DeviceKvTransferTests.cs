using OrtKvTier.Cache;
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

    private static bool RowsEqual(KvLayout layout, ReadOnlySpan<byte> restored, ReadOnlySpan<byte> computed, int rows, int computedCapacity, int? restoredCapacity = null)
    {
        int row = layout.BytesPerHeadToken;
        for (int h = 0; h < layout.KvHeads; h++)
            if (!restored.Slice(h * (restoredCapacity ?? rows) * row, rows * row).SequenceEqual(computed.Slice(h * computedCapacity * row, rows * row))) return false;
        return true;
    }

    public void Dispose() => _temp.Dispose();
}
