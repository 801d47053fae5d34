using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Tensors;

/// <summary>
/// The past tensors of a generator as they were when a background capture started (key 0, value 0,
/// key 1, …, <see cref="Capacity"/> rows per head), kept alive for it: a tensor the generator replaces
/// meanwhile is handed over here and disposed when the hold is. Rows below the held length must not be
/// written until then (the generator waits before a rewind or restore); later rows may be.
/// </summary>
internal sealed class PastHold : IDisposable
{
    private readonly Lock _gate = new();
    private List<OrtValue>? _handedOver = [];

    public PastHold(OrtValue[] tensors, int capacity)
    {
        Tensors = tensors;
        Capacity = capacity;
    }

    public OrtValue[] Tensors { get; }

    public int Capacity { get; }

    /// <summary>True when <paramref name="tensor"/> is held: the hold disposes it, the caller must not.</summary>
    public bool TakeOver(OrtValue tensor)
    {
        lock (_gate)
        {
            if (_handedOver is null || Array.IndexOf(Tensors, tensor) < 0) return false;
            _handedOver.Add(tensor);
            return true;
        }
    }

    public void Dispose()
    {
        List<OrtValue>? handedOver;
        lock (_gate)
        {
            handedOver = _handedOver;
            _handedOver = null;
        }
        foreach (var tensor in handedOver ?? []) tensor.Dispose();
    }
}
