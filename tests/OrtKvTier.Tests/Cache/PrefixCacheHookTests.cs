using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Cache;

/// <summary>The hook in a plain IOBinding loop of one's own (the README's example), in both KV modes.</summary>
public sealed class PrefixCacheHookTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void AHandWrittenLoopWithTheHookGetsTheGeneratorsLogitsAndReusesItsPrefix(bool shared)
    {
        using var model = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = shared });
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = _temp.Sub("cache"), ChunkTokens = 16, DiskCapacityBytes = 16L << 20, AlwaysRestore = true });
        var hook = new PrefixCacheHook(cache, model.Layout);
        var prompt = CacheTestKit.Prompt(70, seed: 30);

        var (coldLogits, coldRestored) = PromptLogits(model, hook, prompt);
        var (warmLogits, warmRestored) = PromptLogits(model, hook, prompt);
        var reference = CacheTestKit.Greedy(model, prompt, cache: null).Logits;

        Assert.Equal(0, coldRestored);
        Assert.Equal(64, warmRestored);
        Assert.Equal(reference, coldLogits);
        Assert.Equal(reference, warmLogits);
        // What the hand-written loop captured serves the library's own generator too.
        using var generator = new KvGenerator(model, cache: cache);
        generator.AppendTokens(prompt);
        Assert.Equal(64, generator.LastRestore.RestoredTokens);
    }

    [Fact]
    public void BadTensorsAreRefusedWithWhatWasExpected()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = 16, AlwaysRestore = true });
        var hook = new PrefixCacheHook(cache, model.Layout);
        using var wrong = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, [1, 3, 8, 16]);
        var e = Assert.Throws<ArgumentException>(() => hook.Capture([1, 2, 3], [wrong, wrong, wrong, wrong]));
        Assert.Contains("expected Float [1, 2, rows, 16]", e.Message);
        e = Assert.Throws<ArgumentException>(() => hook.Capture([1, 2, 3], [wrong]));
        Assert.Contains("Expected 4 tensors", e.Message);
        using var fp16 = KvModel.Load(TestPaths.TinyFp16);
        Assert.Throws<ArgumentException>(() => new PrefixCacheHook(cache, fp16.Layout));
    }

    /// <summary>The README example: restore, run the rest of the prompt, capture.</summary>
    private static (float[] Logits, int Restored) PromptLogits(KvModel model, PrefixCacheHook hook, int[] prompt)
    {
        var layout = model.Layout;
        using var binding = model.Session.CreateIoBinding();
        using var runOptions = new RunOptions();
        var sharedBuffers = layout.SharedBuffer ? AllocateKv(layout, layout.MaxLength) : null;
        using var restored = hook.Restore(prompt, binding, sharedBuffers);

        int past = restored.Tokens, total = prompt.Length;
        var ids = prompt[past..].Select(t => (long)t).ToArray();
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using var mask = OrtValue.CreateTensorValueFromMemory(Enumerable.Repeat(1L, total).ToArray(), [1, total]);
        using var logits = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, TensorElementType.Float, [1, ids.Length, model.VocabSize]);
        binding.BindInput(model.Names.InputIds, idsValue);
        binding.BindInput(model.Names.AttentionMask, mask);
        binding.BindOutput(model.Names.Logits, logits);
        var presents = sharedBuffers ?? AllocateKv(layout, total);
        if (!layout.SharedBuffer)
            for (int l = 0; l < layout.Layers; l++)
            {
                binding.BindOutput(layout.PresentKeyNames[l], presents[2 * l]);
                binding.BindOutput(layout.PresentValueNames[l], presents[2 * l + 1]);
            }
        model.Session.RunWithBinding(runOptions, binding);
        hook.Capture(prompt, presents);

        var last = logits.GetTensorDataAsSpan<float>().Slice((ids.Length - 1) * model.VocabSize, model.VocabSize).ToArray();
        foreach (var v in presents) v.Dispose();
        return (last, past);
    }

    private static OrtValue[] AllocateKv(KvLayout layout, int rows) =>
        Enumerable.Range(0, layout.Layers * 2)
            .Select(_ => OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, layout.OrtElementType, [1, layout.KvHeads, rows, layout.HeadSize]))
            .ToArray();

    public void Dispose() => _temp.Dispose();
}
