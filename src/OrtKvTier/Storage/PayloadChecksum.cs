using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// The payload checksum: XxHash128 over the XxHash128 of each <see cref="ChecksumBlockBytes"/> block.
/// Blocks are independent, so large payloads are hashed (and copied) on several threads.
/// </summary>
internal static unsafe class PayloadChecksum
{
    /// <summary>Below this many blocks, waking pool threads costs more than it saves.</summary>
    private const int ParallelFromBlocks = 2;

    /// <summary>
    /// Returns the checksum of <paramref name="payload"/> and writes it to <paramref name="file"/> at
    /// <paramref name="offset"/>, each block written right after it is hashed (while it is in cache), on
    /// several threads. <paramref name="beforeWrite"/>(file offset) runs before each write (fault injection in tests).
    /// </summary>
    public static UInt128 ComputeAndWrite(ReadOnlySpan<byte> payload, SafeFileHandle file, long offset, int parallelism, Action<long>? beforeWrite = null)
    {
        fixed (byte* p = payload)
            return Run(PayloadSource.Memory(p), null, payload.Length, parallelism, new PayloadSink(file, offset, beforeWrite));
    }

    /// <summary>The checksum of <paramref name="length"/> bytes of a file from <paramref name="offset"/>, read with positional reads.</summary>
    public static UInt128 Compute(SafeFileHandle file, long offset, long length, int parallelism) =>
        Run(PayloadSource.File(file, offset), null, length, parallelism);

    /// <summary>Blocks of a payload of <paramref name="length"/> bytes.</summary>
    public static int BlockCount(long length) => (int)((length + ChecksumBlockBytes - 1) / ChecksumBlockBytes);

    /// <summary>
    /// Reads blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive) of a payload of
    /// <paramref name="length"/> bytes at <paramref name="offset"/> in a file to where <paramref name="scatter"/>
    /// says, writing each block's hash at its place in <paramref name="hashes"/> (16 bytes per block) for
    /// <see cref="Combine"/>: a payload read in several steps.
    /// </summary>
    public static void ReadBlocks(SafeFileHandle file, long offset, PayloadScatter scatter, long length, int firstBlock, int endBlock, byte[] hashes, int parallelism) =>
        RunBlocks(PayloadSource.File(file, offset), scatter, null, length, firstBlock, endBlock, hashes, parallelism);

    /// <summary>The payload checksum from the hashes of all its blocks.</summary>
    public static UInt128 Combine(ReadOnlySpan<byte> hashes) => XxHash128.HashToUInt128(hashes);

    private static UInt128 Run(PayloadSource source, PayloadScatter? scatter, long length, int parallelism, PayloadSink? sink = null)
    {
        int blocks = BlockCount(length);
        var hashes = new byte[blocks * 16];
        RunBlocks(source, scatter, sink, length, 0, blocks, hashes, parallelism);
        return Combine(hashes);
    }

    private static void RunBlocks(PayloadSource source, PayloadScatter? scatter, PayloadSink? sink, long length, int firstBlock, int endBlock, byte[] hashes, int parallelism)
    {
        if (endBlock - firstBlock >= ParallelFromBlocks && parallelism > 1)
            try
            {
                Parallel.For(firstBlock, endBlock, new ParallelOptions { MaxDegreeOfParallelism = parallelism },
                    b => HashBlock(source, scatter, sink, length, b, hashes.AsSpan(b * 16, 16)));
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                // Callers handle the I/O error itself (IOException, ObjectDisposedException), as from one thread.
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
            }
        else
            for (int b = firstBlock; b < endBlock; b++) HashBlock(source, scatter, sink, length, b, hashes.AsSpan(b * 16, 16));
    }

    // Optimized from the first call: a restarted process serves its first restore with it.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void HashBlock(PayloadSource source, PayloadScatter? scatter, PayloadSink? sink, long length, int block, Span<byte> hashOut)
    {
        long start = (long)block * ChecksumBlockBytes;
        int size = (int)(Math.Min(start + ChecksumBlockBytes, length) - start);
        if (scatter is { IsContiguous: true } contiguous)
        {
            // Hash the bytes as read, in one shot: XxHash128's streaming Append runs at about 1 GB/s
            // here against 14 GB/s for one call over a block. A contiguous destination is hashed where it landed.
            XxHash128.Hash(source.Read(start, new Span<byte>(contiguous.Target(0) + start, size)), hashOut);
            return;
        }
        if (source.IsMemory && scatter is null)
        {
            var bytes = new ReadOnlySpan<byte>(source.At(start), size);
            XxHash128.Hash(bytes, hashOut);
            sink?.Write(start, bytes);
            return;
        }
        // From the file: staged in a cache-resident block, hashed, then written on or spread out.
        var stage = StagingBlocks.Rent();
        try
        {
            var staged = source.Read(start, new Span<byte>(stage.Pointer, size));
            XxHash128.Hash(staged, hashOut);
            sink?.Write(start, staged);
            scatter?.Place(stage.Pointer, start, size);
        }
        finally
        {
            StagingBlocks.Return(stage);
        }
    }

    /// <summary>
    /// Blocks of native memory that stage a block on its way from the file (rented per block, so nothing is
    /// tied to a thread). Native, not pinned arrays: a restore's first use on each pool thread would otherwise
    /// add megabytes to the pinned heap and set off a full garbage collection in the middle of the request.
    /// </summary>
    private static readonly NativeBufferPool StagingBlocks = new(ChecksumBlockBytes, 2L * Environment.ProcessorCount * ChecksumBlockBytes);
}

/// <summary>
/// Where a payload's bytes come from: memory, or a file read with positional reads (<c>pread</c>),
/// which copies from the page cache without mapping its pages into the process (a fresh process
/// pays a page fault per 4 KiB of a mapping it touches first).
/// </summary>
internal readonly unsafe struct PayloadSource
{
    private readonly byte* _memory;
    private readonly SafeFileHandle? _file;
    private readonly long _offset;

    private PayloadSource(byte* memory, SafeFileHandle? file, long offset)
    {
        _memory = memory;
        _file = file;
        _offset = offset;
    }

    public static PayloadSource Memory(byte* start) => new(start, null, 0);

    public static PayloadSource File(SafeFileHandle file, long offset) => new(null, file, offset);

    public bool IsMemory => _file is null;

    public byte* At(long position) => _memory + position;

    /// <summary>Copies the bytes at <paramref name="position"/> into <paramref name="into"/> (all of it: a file that ends early leaves zeros, which no checksum matches).</summary>
    public Span<byte> Read(long position, Span<byte> into)
    {
        if (_file is null)
        {
            new ReadOnlySpan<byte>(_memory + position, into.Length).CopyTo(into);
            return into;
        }
        int done = 0;
        while (done < into.Length)
        {
            int read = RandomAccess.Read(_file, into[done..], _offset + position + done);
            if (read == 0)
            {
                into[done..].Clear();
                break;
            }
            done += read;
        }
        return into;
    }
}

/// <summary>Where a payload's bytes are written as they are hashed: a file from an offset, with positional writes.</summary>
internal readonly struct PayloadSink(SafeFileHandle file, long offset, Action<long>? beforeWrite)
{
    public void Write(long position, ReadOnlySpan<byte> bytes)
    {
        beforeWrite?.Invoke(offset + position);
        RandomAccess.Write(file, bytes, offset + position);
    }
}
