using System.Runtime.InteropServices;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.GpuChecks;

/// <summary>(a): on the device, logits after a restored prefix equal those of a full prefill; greedy tokens equal the CPU loop's.</summary>
internal static class ParityCheck
{
    public static ParityResult Run(string folder, bool shared)
    {
        using var device = KvModel.Load(folder, new KvModelOptions { Device = ExecutionDevice.Cuda, SharedBuffer = shared });
        using var cpu = KvModel.Load(folder, new KvModelOptions { SharedBuffer = shared });
        var prompt = Enumerable.Range(0, 70).Select(i => 3 + (i * 37) % 490).ToArray();
        using var cache = PrefixCache.Open(device, new PrefixCacheOptions { ChunkTokens = 16, AlwaysRestore = true });

        var full = Logits(device, prompt, cache: null, out _);
        Logits(device, prompt, cache, out _); // captures
        var restored = Logits(device, prompt, cache, out int restoredTokens);
        float maxDiff = 0;
        for (int i = 0; i < full.Length; i++) maxDiff = Math.Max(maxDiff, Math.Abs(full[i] - restored[i]));
        bool bitwise = MemoryMarshal.AsBytes(full.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(restored.AsSpan()));

        var onDevice = Greedy(device, prompt, cache, 24, rewindAndRepeat: true);
        var onCpu = Greedy(cpu, prompt, cache: null, 24);
        int firstDifference = Enumerable.Range(0, onCpu.Length).FirstOrDefault(i => onDevice[i] != onCpu[i], -1);

        // The device tier: the first request stores the prefix in device memory, the next restores it device to device.
        using var withDeviceTier = PrefixCache.Open(device, new PrefixCacheOptions { ChunkTokens = 16, DeviceBudgetBytes = 64L << 20, AlwaysRestore = true });
        Logits(device, prompt, withDeviceTier, out _);
        var fromDevice = Restore(device, prompt, withDeviceTier);
        var deviceTierTokens = Greedy(device, prompt, withDeviceTier, 24);
        // The prompt captured in the background (device → pinned → host chunks) while the next tokens run on the device.
        using var captureCache = PrefixCache.Open(device, new PrefixCacheOptions { ChunkTokens = 16, AlwaysRestore = true });
        bool backgroundCapture = CaptureWhileGenerating(device, prompt, captureCache, 24).SequenceEqual(onCpu)
            && Restore(device, prompt, captureCache).RestoredTokens == restoredTokens && Greedy(device, prompt, captureCache, 24).SequenceEqual(onCpu);

        var result = new ParityResult(shared ? "shared buffer" : "growing past", device.Device.ToString(), restoredTokens, bitwise, maxDiff,
            firstDifference < 0, firstDifference, string.Join(", ", fromDevice.TokensByTier.Select(t => $"{t.Value} from {t.Key}")), deviceTierTokens.SequenceEqual(onCpu),
            backgroundCapture);
        Console.WriteLine($"parity {result.Mode}: restored {restoredTokens} tokens, logits bitwise equal {bitwise} (max |diff| {maxDiff}), " +
            $"greedy tokens equal to CPU {result.TokensEqualCpu}{(firstDifference >= 0 ? $" (first difference at {firstDifference})" : "")}; " +
            $"device tier: restored {result.DeviceTierRestore}, greedy tokens equal to CPU {result.DeviceTierTokensEqualCpu}; captured while generating, tokens equal to CPU {result.BackgroundCaptureTokensEqualCpu}");
        return result;
    }

    private static float[] Logits(KvModel model, int[] prompt, PrefixCache? cache, out int restored)
    {
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + 1, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        generator.CaptureToCache();
        restored = generator.LastRestore.RestoredTokens;
        return generator.GetLogits().ToArray();
    }

    /// <summary>Greedy tokens, the prompt's capture started after the first one and awaited after the last.</summary>
    private static int[] CaptureWhileGenerating(KvModel model, int[] prompt, PrefixCache cache, int count)
    {
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + count, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        var tokens = new List<int> { generator.GenerateNextToken() };
        var capture = generator.CaptureToCacheInBackground();
        while (!generator.IsDone) tokens.Add(generator.GenerateNextToken());
        if (capture.GetAwaiter().GetResult() != prompt.Length / cache.ChunkTokens)
            throw new InvalidOperationException($"The background capture stored {capture.Result} chunks; expected {prompt.Length / cache.ChunkTokens}.");
        return tokens.ToArray();
    }

    private static PrefixRestoreReport Restore(KvModel model, int[] prompt, PrefixCache cache)
    {
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + 1, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        return generator.LastRestore;
    }

    /// <summary>Greedy tokens; with <paramref name="rewindAndRepeat"/>, rewinds to the prompt (truncating the past where it lives) and checks the repeat matches.</summary>
    private static int[] Greedy(KvModel model, int[] prompt, PrefixCache? cache, int count, bool rewindAndRepeat = false)
    {
        using var generator = new KvGenerator(model, SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + count, DoSample = false }, cache);
        generator.AppendTokens(prompt);
        var tokens = new List<int>();
        while (!generator.IsDone) tokens.Add(generator.GenerateNextToken());
        if (rewindAndRepeat)
        {
            generator.RewindTo(prompt.Length + count / 2);
            var again = tokens.Take(count / 2).ToList();
            while (!generator.IsDone) again.Add(generator.GenerateNextToken());
            if (!again.SequenceEqual(tokens)) throw new InvalidOperationException($"After RewindTo the tokens differ: {string.Join(',', tokens)} then {string.Join(',', again)}.");
        }
        return tokens.ToArray();
    }
}
