using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Keys;
using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// The prefix cache for a generation loop of your own over <see cref="InferenceSession"/> +
/// <see cref="OrtIoBinding"/>. Before the prompt run, <see cref="Restore"/> binds past tensors that
/// already hold the longest cached prefix; run only the tokens after it. After a run,
/// <see cref="Capture"/> stores the new full chunks from the present tensors. Thread-safe (the
/// cache is shared); each call works on the tensors you pass.
/// </summary>
public sealed class PrefixCacheHook
{
    private readonly PrefixCache _cache;
    private readonly KvLayout _layout;
    private readonly ChunkChain _chain;

    /// <summary>
    /// A hook over <paramref name="cache"/> for a model with <paramref name="layout"/> (the cache's own), for
    /// <paramref name="tenant"/> (chosen by the application; tenants never hit each other's entries).
    /// </summary>
    public PrefixCacheHook(PrefixCache cache, KvLayout layout, string? tenant = null)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(layout);
        if (layout.ShapeKey != cache.Layout.ShapeKey)
            throw new ArgumentException($"The cache holds {cache.Layout.ShapeKey} KV; this layout is {layout.ShapeKey}. Open the cache for this model.", nameof(layout));
        _cache = cache;
        _layout = layout;
        _chain = cache.ChainFor(tenant);
    }

    /// <summary>The cache underneath.</summary>
    public PrefixCache Cache => _cache;

    /// <summary>
    /// Finds the longest cached chain of full chunks at the start of <paramref name="tokens"/> (always
    /// leaving at least the last token to run, so the next run yields logits), gathers it into past
    /// tensors and binds them to <paramref name="binding"/>:
    /// <list type="bullet">
    /// <item>growing past (no <paramref name="sharedBuffers"/>): new <c>[1, kvH, P, D]</c> tensors owned by the
    /// result, bound as the <c>past_key_values.*</c> inputs (P may be 0). Bind presents of <c>P + new tokens</c> rows yourself.</item>
    /// <item>shared buffer: your <c>[1, kvH, max_length, D]</c> tensors, 2 per layer in order (key 0, value 0, key 1, …),
    /// written from row 0 and bound as both past inputs and present outputs.</item>
    /// </list>
    /// Then run tokens <c>[P..]</c> with an attention mask of <c>P + new tokens</c> ones.
    /// </summary>
    public RestoredPrefix Restore(ReadOnlySpan<int> tokens, OrtIoBinding binding, IReadOnlyList<OrtValue>? sharedBuffers = null)
    {
        ArgumentNullException.ThrowIfNull(binding);
        if (tokens.IsEmpty) throw new ArgumentException("Restore needs the prompt's tokens (at least one).", nameof(tokens));
        if (sharedBuffers is not null)
        {
            var shared = OrtKvTensors.Wrap(sharedBuffers, _layout, nameof(sharedBuffers));
            if (tokens.Length > shared.Capacity)
                throw new ArgumentException($"The prompt has {tokens.Length} tokens; the shared buffers hold {shared.Capacity}.", nameof(tokens));
            var report = _cache.Restore(tokens, 0, KvMemory.Host, _chain, _ => shared);
            for (int layer = 0; layer < _layout.Layers; layer++)
            {
                binding.BindInput(_layout.PastKeyNames[layer], sharedBuffers[2 * layer]);
                binding.BindOutput(_layout.PresentKeyNames[layer], sharedBuffers[2 * layer]);
                binding.BindInput(_layout.PastValueNames[layer], sharedBuffers[2 * layer + 1]);
                binding.BindOutput(_layout.PresentValueNames[layer], sharedBuffers[2 * layer + 1]);
            }
            return new RestoredPrefix(report, sharedBuffers, owned: false);
        }

        OrtKvTensors? grown = null;
        try
        {
            var report = _cache.Restore(tokens, 0, KvMemory.Host, _chain, length =>
            {
                grown?.Dispose();
                grown = null;
                return grown = OrtKvTensors.Allocate(_layout, length);
            });
            grown ??= OrtKvTensors.Allocate(_layout, 0);
            for (int layer = 0; layer < _layout.Layers; layer++)
            {
                binding.BindInput(_layout.PastKeyNames[layer], grown.Values[2 * layer]);
                binding.BindInput(_layout.PastValueNames[layer], grown.Values[2 * layer + 1]);
            }
            return new RestoredPrefix(report, grown.Values, owned: true);
        }
        catch
        {
            grown?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Stores every full chunk of <paramref name="tokens"/> the cache does not hold yet, reading it
    /// from <paramref name="presents"/>: the present (or shared) tensors after a run, 2 per layer in
    /// order (key 0, value 0, key 1, …), whose first <c>tokens.Length</c> rows hold those tokens.
    /// Returns the chunks stored.
    /// </summary>
    public int Capture(ReadOnlySpan<int> tokens, IReadOnlyList<OrtValue> presents)
    {
        var view = OrtKvTensors.Wrap(presents, _layout, nameof(presents));
        if (tokens.Length > view.Capacity)
            throw new ArgumentException($"{tokens.Length} tokens were given; the present tensors hold {view.Capacity} rows.", nameof(tokens));
        return ChunkCapture.Capture(_cache, _chain, tokens, tokens.Length, view, [], 0);
    }
}

/// <summary>The result of <see cref="PrefixCacheHook.Restore"/>: how much was restored, and the past tensors it bound.</summary>
public sealed class RestoredPrefix : IDisposable
{
    private readonly bool _owned;

    internal RestoredPrefix(PrefixRestoreReport report, IReadOnlyList<OrtValue> pastTensors, bool owned)
    {
        Report = report;
        PastTensors = pastTensors;
        _owned = owned;
    }

    /// <summary>Leading prompt tokens whose keys and values the past tensors hold; run the tokens after them.</summary>
    public int Tokens => Report.RestoredTokens;

    /// <summary>Tiers, timings and per-tier tokens.</summary>
    public PrefixRestoreReport Report { get; }

    /// <summary>The bound past tensors (key 0, value 0, key 1, …). Owned by this object in growing mode: keep it alive until the run is done.</summary>
    public IReadOnlyList<OrtValue> PastTensors { get; }

    /// <summary>Frees the past tensors it allocated (growing mode).</summary>
    public void Dispose()
    {
        if (_owned)
            foreach (var value in PastTensors) value.Dispose();
    }
}
