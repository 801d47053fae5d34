using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// Pinned host buffers, one per past tensor, reused by every copy between host and device (pinning memory
/// costs far more than copying it) and grown when too small. Owns the buffers: <see cref="Dispose"/> frees
/// them. Not thread-safe: its user locks the instance while using the views.
/// </summary>
internal sealed class PinnedStaging(KvLayout layout, OrtAllocator allocator) : IDisposable
{
    private OrtValue[]? _buffers;
    private int _tokens;

    /// <summary>
    /// Views <c>[1, kvH, tokens, D]</c> over the start of the buffers, valid until the next call or
    /// <see cref="Dispose"/> (the caller disposes the views).
    /// </summary>
    public unsafe OrtValue[] Views(int tokens)
    {
        if (_buffers is null || tokens > _tokens)
        {
            Dispose();
            _tokens = Math.Max(tokens, _tokens + _tokens / 4);
            _buffers = OrtKvTensors.Allocate(layout, _tokens, allocator).Values;
        }
        var views = new OrtValue[_buffers.Length];
        long bytes = (long)layout.KvHeads * tokens * layout.BytesPerHeadToken;
        try
        {
            for (int i = 0; i < views.Length; i++)
                views[i] = OrtValue.CreateTensorValueWithData(_buffers[i].GetTensorMemoryInfo(), layout.OrtElementType,
                    [1, layout.KvHeads, tokens, layout.HeadSize], (nint)KvMemory.Start(_buffers[i]), bytes);
        }
        catch
        {
            OrtKvTensors.DisposeAll(views);
            throw;
        }
        return views;
    }

    /// <summary>Frees the buffers (views over them must be gone).</summary>
    public void Dispose()
    {
        OrtKvTensors.DisposeAll(_buffers);
        _buffers = null;
    }
}
