using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// The KV of a batch in host memory: per layer one key and one value buffer <c>[rows, kvH, capacity, D]</c>, so the
/// first B rows are one <c>[B, kvH, capacity, D]</c> tensor a batched run binds as past and present. Reserved, not
/// committed: a row costs memory only for the token rows it writes, and gives it back when released. Each row is also
/// a <see cref="PastKeyValues"/> of its own (<see cref="RowPast"/>). Not thread-safe.
/// </summary>
internal sealed unsafe class BatchKvMemory : IDisposable
{
    private readonly KvLayout _layout;
    private readonly byte*[] _buffers;
    private readonly Dictionary<int, OrtValue[]> _batchViews = [];
    private bool _disposed;

    public BatchKvMemory(KvLayout layout, int rows, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        _layout = layout;
        Rows = rows;
        Capacity = capacity;
        RowBytes = (long)layout.KvHeads * capacity * layout.BytesPerHeadToken;
        _buffers = new byte*[layout.Layers * 2];
        try
        {
            // Page-aligned and large: mapped on first write, so only the rows a sequence fills take memory.
            for (int i = 0; i < _buffers.Length; i++) _buffers[i] = (byte*)NativeMemory.AlignedAlloc((nuint)(RowBytes * rows), 4096);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Rows (sequences) the memory holds.</summary>
    public int Rows { get; }

    /// <summary>Token rows per head of each sequence.</summary>
    public int Capacity { get; }

    /// <summary>Bytes of one sequence's key or value tensor of one layer.</summary>
    public long RowBytes { get; }

    /// <summary>Row <paramref name="row"/> as a past of its own (views over this memory; disposing it leaves the memory).</summary>
    public PastKeyValues RowPast(int row)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(row);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(row, Rows);
        return PastKeyValues.Over(_layout, Views(row, 1), Capacity);
    }

    /// <summary>The first <paramref name="rows"/> rows as batch tensors (key 0, value 0, key 1, …), owned here.</summary>
    public OrtValue[] Batch(int rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_batchViews.TryGetValue(rows, out var views)) _batchViews[rows] = views = Views(0, rows);
        return views;
    }

    /// <summary>Gives the pages of a row back to the system (its contents read as zeros afterwards).</summary>
    public void Release(int row)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        foreach (var buffer in _buffers) MemoryAdvice.Release(buffer + row * RowBytes, RowBytes);
    }

    private OrtValue[] Views(int firstRow, int rows)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var views = new OrtValue[_buffers.Length];
        long[] shape = [rows, _layout.KvHeads, Capacity, _layout.HeadSize];
        for (int i = 0; i < views.Length; i++)
            views[i] = OrtValue.CreateTensorValueWithData(OrtMemoryInfo.DefaultInstance, _layout.OrtElementType, shape,
                (nint)(_buffers[i] + firstRow * RowBytes), rows * RowBytes);
        return views;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (var views in _batchViews.Values)
            foreach (var view in views) view.Dispose();
        _batchViews.Clear();
        for (int i = 0; i < _buffers.Length; i++)
        {
            if (_buffers[i] is not null) NativeMemory.AlignedFree(_buffers[i]);
            _buffers[i] = null;
        }
    }
}
