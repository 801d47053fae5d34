using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>A caller's past or present OrtValues (key 0, value 0, key 1, …) seen as the tensors a restore or capture works on.</summary>
internal sealed class OrtKvTensors : IKvTensorView, IDisposable
{
    private OrtKvTensors(OrtValue[] values, int capacity)
    {
        Values = values;
        Capacity = capacity;
    }

    public OrtValue[] Values { get; }

    public int Capacity { get; }

    public Span<byte> TensorBytes(int layer, bool value) => Values[2 * layer + (value ? 1 : 0)].GetTensorMutableRawData();

    public OrtValue[] Tensors() => Values;

    /// <summary>Sees <paramref name="values"/> (key 0, value 0, …; <paramref name="capacity"/> rows per head) as KV tensors, without checks; the caller keeps owning them.</summary>
    public static OrtKvTensors View(OrtValue[] values, int capacity) => new(values, capacity);

    /// <summary>New tensors <c>[1, kvH, tokens, D]</c> from <paramref name="allocator"/> (default: host memory).</summary>
    public static OrtKvTensors Allocate(KvLayout layout, int tokens, OrtAllocator? allocator = null)
    {
        var values = new OrtValue[layout.Layers * 2];
        try
        {
            for (int i = 0; i < values.Length; i++)
                values[i] = OrtValue.CreateAllocatedTensorValue(allocator ?? OrtAllocator.DefaultInstance, layout.OrtElementType, [1, layout.KvHeads, tokens, layout.HeadSize]);
        }
        catch
        {
            foreach (var v in values) v?.Dispose();
            throw;
        }
        return new OrtKvTensors(values, tokens);
    }

    /// <summary>Checks that <paramref name="values"/> are 2 per layer of <c>[1, kvH, same rows, D]</c> in the layout's element type.</summary>
    public static OrtKvTensors Wrap(IReadOnlyList<OrtValue> values, KvLayout layout, string parameter)
    {
        ArgumentNullException.ThrowIfNull(values, parameter);
        if (values.Count != layout.Layers * 2)
            throw new ArgumentException($"Expected {layout.Layers * 2} tensors (key and value for each of {layout.Layers} layers, in that order); got {values.Count}.", parameter);
        long rows = -1;
        for (int i = 0; i < values.Count; i++)
        {
            var info = values[i]?.GetTensorTypeAndShape() ?? throw new ArgumentException($"Tensor {i} is null.", parameter);
            var shape = info.Shape;
            if (info.ElementDataType != layout.OrtElementType || shape.Length != 4 || shape[0] != 1 || shape[1] != layout.KvHeads || shape[3] != layout.HeadSize || (rows >= 0 && shape[2] != rows))
                throw new ArgumentException(
                    $"Tensor {i} is {info.ElementDataType} [{string.Join(", ", shape)}]; expected {layout.OrtElementType} [1, {layout.KvHeads}, {(rows >= 0 ? rows : "rows")}, {layout.HeadSize}] like every other one.", parameter);
            var memory = values[i].GetTensorMemoryInfo();
            if (memory.GetDeviceType() != OrtMemoryInfoDeviceType.CPU && memory.GetDeviceMemoryType() != OrtDeviceMemoryType.HOST_ACCESSIBLE)
                throw new ArgumentException($"Tensor {i} lives in device memory; this hook reads and writes host (or pinned) tensors. Bind host past/present tensors, or copy them to host or pinned memory first (on CUDA, KvGenerator restores into device memory itself).", parameter);
            rows = shape[2];
        }
        return new OrtKvTensors(values.ToArray(), checked((int)rows));
    }

    public void Dispose() => DisposeAll(Values);

    /// <summary>Disposes every tensor of <paramref name="values"/> (null entries and a null array are skipped).</summary>
    public static void DisposeAll(OrtValue?[]? values)
    {
        if (values is null) return;
        foreach (var v in values) v?.Dispose();
    }
}
