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

    private static bool RowsEqual(KvLayout layout, ReadOnlySpan<byte> restored, ReadOnlySpan<byte> computed, int rows, int computedCapacity)
    {
        int row = layout.BytesPerHeadToken;
        for (int h = 0; h < layout.KvHeads; h++)
            if (!restored.Slice(h * rows * row, rows * row).SequenceEqual(computed.Slice(h * computedCapacity * row, rows * row))) return false;
        return true;
    }

    public void Dispose() => _temp.Dispose();
}
