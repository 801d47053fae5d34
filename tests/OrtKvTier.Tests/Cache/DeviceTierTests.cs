using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Tiers;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tests.Cache;

/// <summary>
/// The device tier's bookkeeping (prefix entries, budget, eviction into host memory, leases), run with host
/// memory standing in for device memory: the copies are the same calls, the GPU checks run them on CUDA.
/// </summary>
public sealed class DeviceTierTests : IDisposable
{
    private const int Chunk = 16;
    private readonly KvModel _model = KvModel.Load(TestPaths.Shipped("tiny-fp16"));

    [Fact]
    public void APrefixRestoresTheRowsTheModelComputedForEveryPromptThatStartsWithIt()
    {
        using var cache = OpenCache(deviceChunks: 64);
        var device = cache.EnableDeviceTier(OrtAllocator.DefaultInstance);
        var prompt = CacheTestKit.Prompt(5 * Chunk + 3, seed: 60);
        using (var computed = Compute(prompt))
            Assert.True(device.Store(cache.Chain.Keys(prompt.AsSpan(0, 5 * Chunk)), prompt, computed.Tensors, computed.Capacity));

        // The same first three chunks, then other tokens: the entry serves those three.
        int[] diverging = [.. prompt[..(3 * Chunk)], .. CacheTestKit.Prompt(2 * Chunk + 4, seed: 61)];
        using (var hit = device.Find(cache.Chain.Keys(diverging.AsSpan(0, 5 * Chunk)), diverging))
        {
            Assert.NotNull(hit);
            Assert.Equal(3, hit.Chunks);
            AssertRestoredRowsEqualComputed(hit, diverging, 3 * Chunk);
        }
        using (var hit = device.Find(cache.Chain.Keys(prompt.AsSpan(0, 5 * Chunk)), prompt))
        {
            Assert.Equal(5, hit!.Chunks);
            AssertRestoredRowsEqualComputed(hit, prompt, 5 * Chunk - 2);
        }
        var other = CacheTestKit.Prompt(3 * Chunk, seed: 62);
        Assert.Null(device.Find(cache.Chain.Keys(other), other));
        var stats = device.GetStats();
        Assert.Equal((1L, 2L, 1L, 1L), (stats.Entries, stats.Hits, stats.Misses, stats.Writes));
    }

    [Fact]
    public void ALongerPrefixReplacesTheEntryItExtendsAndAStoredPrefixIsNotStoredTwice()
    {
        using var cache = OpenCache(deviceChunks: 64);
        var device = cache.EnableDeviceTier(OrtAllocator.DefaultInstance);
        var prompt = CacheTestKit.Prompt(6 * Chunk, seed: 63);
        using var computed = Compute(prompt);
        Assert.True(device.Store(cache.Chain.Keys(prompt.AsSpan(0, 3 * Chunk)), prompt, computed.Tensors, computed.Capacity));
        Assert.True(device.Store(cache.Chain.Keys(prompt.AsSpan(0, 6 * Chunk)), prompt, computed.Tensors, computed.Capacity));
        Assert.False(device.Store(cache.Chain.Keys(prompt.AsSpan(0, 4 * Chunk)), prompt, computed.Tensors, computed.Capacity));
        var stats = device.GetStats();
        Assert.Equal(1, stats.Entries);
        Assert.Equal(6 * Chunk * _model.Layout.BytesPerToken, stats.Bytes);
        Assert.Equal(0, stats.Evictions);
    }

    [Fact]
    public void OverBudgetTheLeastRecentlyUsedPrefixMovesToHostMemoryAndAPrefixBeingCopiedStaysReadable()
    {
        using var cache = OpenCache(deviceChunks: 6);
        var device = cache.EnableDeviceTier(OrtAllocator.DefaultInstance);
        var first = CacheTestKit.Prompt(4 * Chunk + 2, seed: 64);
        var second = CacheTestKit.Prompt(4 * Chunk + 2, seed: 65);
        var firstKeys = cache.Chain.Keys(first.AsSpan(0, 4 * Chunk));
        using (var computed = Compute(first)) device.Store(firstKeys, first, computed.Tensors, computed.Capacity);
        Assert.All(firstKeys, k => Assert.False(cache.Host.Contains(k)));

        using var lease = device.Find(firstKeys, first);
        using (var computed = Compute(second))
            Assert.True(device.Store(cache.Chain.Keys(second.AsSpan(0, 4 * Chunk)), second, computed.Tensors, computed.Capacity));

        // Evicted (4 + 4 chunks do not fit 6) into host memory, and still copyable by the restore that leased it.
        Assert.Null(device.Find(firstKeys, first));
        Assert.All(firstKeys, k => Assert.True(cache.Host.Contains(k)));
        AssertRestoredRowsEqualComputed(lease!, first, 4 * Chunk);
        var stats = device.GetStats();
        Assert.Equal((1L, 1L), (stats.Entries, stats.Evictions));

        // What went to host memory is what the model computes: a generator restores it and matches a full prefill.
        var restored = CacheTestKit.Greedy(_model, first, cache);
        Assert.Equal(4 * Chunk, restored.Restore.RestoredTokens);
        Assert.All(restored.Restore.ChunkTiers, t => Assert.Equal("host", t));
        Assert.True(restored.LogitsBitwiseEqual(CacheTestKit.Greedy(_model, first, cache: null)));
    }

    [Fact]
    public void OnTheCpuGeneratorsLeaveTheDeviceTierAloneAndABadBudgetIsRefused()
    {
        using var cache = PrefixCache.Open(_model, new PrefixCacheOptions { ChunkTokens = Chunk, DeviceBudgetBytes = 1L << 20, AlwaysRestore = true });
        CacheTestKit.Greedy(_model, CacheTestKit.Prompt(3 * Chunk, seed: 66), cache);
        Assert.Null(cache.Device);
        Assert.DoesNotContain(cache.GetStats().Tiers, t => t.Name == TierId.Device.Name);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => PrefixCache.Open(_model, new PrefixCacheOptions { DeviceBudgetBytes = -1 }));
        Assert.Equal("DeviceBudgetBytes", e.ParamName);
    }

    private PrefixCache OpenCache(int deviceChunks) => PrefixCache.Open(_model, new PrefixCacheOptions
    {
        ChunkTokens = Chunk, HostBudgetBytes = 64L << 20, DeviceBudgetBytes = deviceChunks * Chunk * _model.Layout.BytesPerToken, AlwaysRestore = true,
    });

    /// <summary>The model's past tensors after a full prefill of <paramref name="prompt"/>.</summary>
    private ComputedPast Compute(int[] prompt)
    {
        var generator = new KvGenerator(_model);
        generator.AppendTokens(prompt);
        generator.GetLogits();
        return new ComputedPast(generator, _model.Layout);
    }

    private void AssertRestoredRowsEqualComputed(DeviceTier.DeviceHit hit, int[] prompt, int rows)
    {
        using var target = OrtKvTensors.Allocate(_model.Layout, rows + 7);
        hit.CopyInto(target.Values, target.Capacity, rows);
        using var computed = Compute(prompt[..rows]);
        int row = _model.Layout.BytesPerHeadToken;
        for (int t = 0; t < target.Values.Length; t++)
        {
            var restored = target.Values[t].GetTensorMutableRawData();
            var expected = computed.Tensors[t].GetTensorMutableRawData();
            for (int h = 0; h < _model.Layout.KvHeads; h++)
                Assert.True(restored.Slice(h * target.Capacity * row, rows * row).SequenceEqual(expected.Slice(h * computed.Capacity * row, rows * row)),
                    $"tensor {t} head {h}");
        }
    }

    private sealed class ComputedPast(KvGenerator generator, KvLayout layout) : IDisposable
    {
        public OrtValue[] Tensors { get; } = Enumerable.Range(0, layout.Layers * 2).Select(i => generator.Past.Tensor(i / 2, i % 2 == 1)).ToArray();
        public int Capacity => generator.Past.Capacity;
        public void Dispose() => generator.Dispose();
    }

    public void Dispose() => _model.Dispose();
}
