using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Tensors;

/// <summary>
/// Where the past tensors of one sequence live, in the model's layout: per layer a key and a value
/// tensor <c>[1, kvH, Capacity, D]</c>, head h's token t at row <c>h × Capacity + t</c>.
/// </summary>
internal interface IKvTensorView
{
    /// <summary>Token rows per head.</summary>
    int Capacity { get; }

    /// <summary>The bytes of one layer's key (<paramref name="value"/> false) or value tensor (host or pinned memory only).</summary>
    Span<byte> TensorBytes(int layer, bool value);

    /// <summary>The tensors in chunk order (key 0, value 0, key 1, …), in whatever memory they live.</summary>
    OrtValue[] Tensors();
}
