using System.Runtime.InteropServices;
using OrtKvTier.Storage;

namespace OrtKvTier.Tensors;

/// <summary>
/// Native buffers of one chunk's size, recycled: a released chunk's buffer serves the next capture.
/// New memory costs far more than copying into it (the kernel maps and zeroes every 4 KiB page: 0.7 GB/s
/// for fresh buffers against 10+ GB/s for reused ones on the 2-core VM), and a cache allocates and drops
/// chunks all the time (captures, evictions, chunks on their way to the disk). Keeps at most
/// <see cref="KeepBytes"/> of idle buffers. Thread-safe.
/// </summary>
internal sealed unsafe class ChunkBuffers(long chunkBytes) : IDisposable
{
    /// <summary>Idle buffers kept for reuse, at most.</summary>
    public const long KeepBytes = 64L << 20;

    private const nuint Alignment = 64;
    private readonly Stack<nint> _idle = new();
    private readonly int _keep = (int)Math.Max(4, KeepBytes / chunkBytes);
    private bool _disposed;

    public long ChunkBytes { get; } = chunkBytes;

    /// <summary>A buffer of <see cref="ChunkBytes"/> (contents undefined), its pages mapped.</summary>
    public byte* Rent()
    {
        lock (_idle)
            if (_idle.TryPop(out var idle)) return (byte*)idle;
        var buffer = (byte*)NativeMemory.AlignedAlloc((nuint)ChunkBytes, Alignment);
        MemoryAdvice.PopulateWrite(buffer, ChunkBytes);
        return buffer;
    }

    /// <summary>Takes a buffer back from <see cref="Rent"/>.</summary>
    public void Return(byte* buffer)
    {
        lock (_idle)
            if (!_disposed && _idle.Count < _keep)
            {
                _idle.Push((nint)buffer);
                return;
            }
        NativeMemory.AlignedFree(buffer);
    }

    /// <summary>Frees the idle buffers; buffers returned later are freed at once.</summary>
    public void Dispose()
    {
        lock (_idle)
        {
            _disposed = true;
            while (_idle.TryPop(out var idle)) NativeMemory.AlignedFree((void*)idle);
        }
    }
}
