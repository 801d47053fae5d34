using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// Where a generator's past tensors live: host memory, or the device a CUDA session runs on (then
/// restores and captures go through host tensors and <see cref="OrtEnv.CopyTensors"/>).
/// </summary>
internal sealed class KvMemory
{
    public static readonly KvMemory Host = new(OrtAllocator.DefaultInstance, onDevice: false);

    public KvMemory(OrtAllocator allocator, bool onDevice)
    {
        Allocator = allocator;
        OnDevice = onDevice;
    }

    /// <summary>Allocates the past and present tensors.</summary>
    public OrtAllocator Allocator { get; }

    /// <summary>Whether those tensors are in device memory (not addressable from the host).</summary>
    public bool OnDevice { get; }

    /// <summary>The device the memory belongs to (null: host memory).</summary>
    public OrtEpDevice? EpDevice { get; private init; }

    private static readonly ConditionalWeakTable<KvModel, KvMemory> ByModel = new();

    /// <summary>Where <paramref name="model"/>'s generators keep their past: device memory when it runs on CUDA (the session's own allocator), else host memory.</summary>
    public static KvMemory For(KvModel model) =>
        model.EpDevice is not { } device ? Host : ByModel.GetValue(model, m =>
            new KvMemory(new OrtAllocator(m.Session, device.GetMemoryInfo(OrtDeviceMemoryType.DEFAULT)), onDevice: true) { EpDevice = device });

    /// <summary>
    /// Copies the first <paramref name="rows"/> token rows of every head from <paramref name="source"/>
    /// (<c>[1, kvH, sourceRows, D]</c>) to <paramref name="destination"/> (<c>[1, kvH, destinationRows, D]</c>),
    /// in whatever memory each lives.
    /// </summary>
    public static void CopyRows(KvLayout layout, OrtValue source, int sourceRows, OrtValue destination, int destinationRows, int rows) =>
        CopyRows(layout, [source], sourceRows, [destination], destinationRows, rows);

    /// <summary>
    /// <see cref="CopyRows(KvLayout, OrtValue, int, OrtValue, int, int)"/> for tensors pairwise, in one
    /// <see cref="OrtEnv.CopyTensors"/> call when either side is device memory: whole tensors when both
    /// hold exactly <paramref name="rows"/> rows, else one view per head.
    /// </summary>
    public static unsafe void CopyRows(KvLayout layout, IReadOnlyList<OrtValue> sources, int sourceRows, IReadOnlyList<OrtValue> destinations, int destinationRows, int rows)
    {
        if (sources.Count != destinations.Count) throw new ArgumentException($"{sources.Count} sources for {destinations.Count} destinations.");
        if (rows == 0 || sources.Count == 0) return;
        long row = layout.BytesPerHeadToken, bytes = rows * row;
        var from = sources[0].GetTensorMemoryInfo();
        var to = destinations[0].GetTensorMemoryInfo();
        if (from.GetDeviceType() == OrtMemoryInfoDeviceType.CPU && to.GetDeviceType() == OrtMemoryInfoDeviceType.CPU)
        {
            // ONNX Runtime has no host-to-host data transfer ("not found"): copy the bytes.
            for (int i = 0; i < sources.Count; i++)
            {
                byte* src = Start(sources[i]), dst = Start(destinations[i]);
                for (int h = 0; h < layout.KvHeads; h++)
                    Buffer.MemoryCopy(src + h * sourceRows * row, dst + h * destinationRows * row, bytes, bytes);
            }
            return;
        }
        if (sourceRows == rows && destinationRows == rows)
        {
            OrtEnv.Instance().CopyTensors(sources, destinations, null);
            return;
        }
        var sourceViews = new List<OrtValue>(sources.Count * layout.KvHeads);
        var destinationViews = new List<OrtValue>(sources.Count * layout.KvHeads);
        try
        {
            long[] shape = [1, 1, rows, layout.HeadSize];
            for (int i = 0; i < sources.Count; i++)
            {
                byte* src = Start(sources[i]), dst = Start(destinations[i]);
                for (int h = 0; h < layout.KvHeads; h++)
                {
                    sourceViews.Add(OrtValue.CreateTensorValueWithData(from, layout.OrtElementType, shape, (nint)(src + h * sourceRows * row), bytes));
                    destinationViews.Add(OrtValue.CreateTensorValueWithData(to, layout.OrtElementType, shape, (nint)(dst + h * destinationRows * row), bytes));
                }
            }
            OrtEnv.Instance().CopyTensors(sourceViews, destinationViews, null);
        }
        finally
        {
            foreach (var v in sourceViews) v.Dispose();
            foreach (var v in destinationViews) v.Dispose();
        }
    }

    /// <summary>The tensor's data address (device memory is never dereferenced here).</summary>
    internal static unsafe byte* Start(OrtValue value) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(value.GetTensorMutableRawData()));
}
