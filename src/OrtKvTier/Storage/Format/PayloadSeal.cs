using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Security;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// Seals and opens payloads block by block (<see cref="SealBlockBytes"/>): each block's tag is the entry's
/// <see cref="EntrySeal.Tag"/> over the stored bytes, and the payload tag combines them (<see cref="EntrySeal.Combine"/>).
/// An encrypted entry's blocks are encrypted before they are tagged and decrypted after. Blocks are independent,
/// so large payloads are sealed (and copied) on several threads.
/// </summary>
internal static unsafe class PayloadSeal
{
    /// <summary>Below this many blocks, waking pool threads costs more than it saves.</summary>
    private const int ParallelFromBlocks = 2;

    /// <summary>
    /// Seals <paramref name="payload"/> and writes it to <paramref name="file"/> at <paramref name="offset"/>, each block
    /// written right after it is sealed (while it is in cache), on several threads; returns the payload tag.
    /// </summary>
    public static UInt128 SealAndWrite(ReadOnlySpan<byte> payload, EntrySeal seal, IStorageDevice file, long offset, int parallelism)
    {
        fixed (byte* p = payload)
            return Run(PayloadSource.Memory(p), null, payload.Length, seal, parallelism, PayloadSink.File(file, offset));
    }

    /// <summary>Seals <paramref name="payload"/> into <paramref name="stored"/> (as long); returns the payload tag.</summary>
    public static UInt128 SealInto(ReadOnlySpan<byte> payload, Span<byte> stored, EntrySeal seal)
    {
        fixed (byte* p = payload)
        fixed (byte* s = stored)
            return Run(PayloadSource.Memory(p), null, payload.Length, seal, 1, PayloadSink.Memory(s));
    }

    /// <summary>Opens <paramref name="stored"/> into <paramref name="destination"/> (as long, or the same memory: opened in place); returns the tag of what was stored, to compare with the header's.</summary>
    public static UInt128 OpenInto(ReadOnlySpan<byte> stored, Span<byte> destination, EntrySeal seal)
    {
        fixed (byte* s = stored)
        fixed (byte* d = destination)
            return Run(PayloadSource.Memory(s), PayloadScatter.Contiguous(d, destination.Length), stored.Length, seal, 1);
    }

    /// <summary>The tag of <paramref name="length"/> stored bytes of a file from <paramref name="offset"/>, read with positional reads.</summary>
    public static UInt128 TagOf(IStorageDevice file, long offset, long length, EntrySeal seal, int parallelism) =>
        Run(PayloadSource.File(file, offset), null, length, seal, parallelism);

    /// <summary>Blocks of a payload of <paramref name="length"/> bytes.</summary>
    public static int BlockCount(long length) => (int)((length + SealBlockBytes - 1) / SealBlockBytes);

    /// <summary>
    /// Reads blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive) of a payload of
    /// <paramref name="length"/> bytes at <paramref name="offset"/> in a file, opened, to where <paramref name="scatter"/>
    /// says, writing each block's tag at its place in <paramref name="tags"/> (16 bytes per block) for
    /// <see cref="EntrySeal.Combine"/>: a payload read in several steps.
    /// </summary>
    public static void ReadBlocks(IStorageDevice file, long offset, PayloadScatter scatter, long length, int firstBlock, int endBlock, byte[] tags, EntrySeal seal, int parallelism) =>
        RunBlocks(PayloadSource.File(file, offset), scatter, null, length, firstBlock, endBlock, tags, seal, parallelism);

    private static UInt128 Run(PayloadSource source, PayloadScatter? scatter, long length, EntrySeal seal, int parallelism, PayloadSink? sink = null)
    {
        int blocks = BlockCount(length);
        var tags = new byte[blocks * MacBytes];
        RunBlocks(source, scatter, sink, length, 0, blocks, tags, seal, parallelism);
        return seal.Combine(tags);
    }

    private static void RunBlocks(PayloadSource source, PayloadScatter? scatter, PayloadSink? sink, long length, int firstBlock, int endBlock, byte[] tags, EntrySeal seal, int parallelism)
    {
        if (endBlock - firstBlock >= ParallelFromBlocks && parallelism > 1)
            try
            {
                Parallel.For(firstBlock, endBlock, new ParallelOptions { MaxDegreeOfParallelism = parallelism },
                    b => SealBlock(source, scatter, sink, length, b, tags.AsSpan(b * MacBytes, MacBytes), seal));
            }
            catch (AggregateException e) when (e.InnerExceptions.Count > 0)
            {
                // Callers handle the I/O error itself (IOException, ObjectDisposedException), as from one thread.
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e.InnerExceptions[0]).Throw();
            }
        else
            for (int b = firstBlock; b < endBlock; b++) SealBlock(source, scatter, sink, length, b, tags.AsSpan(b * MacBytes, MacBytes), seal);
    }

    // Optimized from the first call: a restarted process serves its first restore with it.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void SealBlock(PayloadSource source, PayloadScatter? scatter, PayloadSink? sink, long length, int block, Span<byte> tag, EntrySeal seal)
    {
        long start = (long)block * SealBlockBytes;
        int size = (int)(Math.Min(start + SealBlockBytes, length) - start);
        if (sink is { } storing)
        {
            var plain = new ReadOnlySpan<byte>(source.At(start), size);
            if (storing.IsMemory)
            {
                var stored = storing.At(start, size);
                seal.Encrypt(block, plain, stored);
                seal.Tag(block, stored, tag);
            }
            else if (!seal.Encrypted)
            {
                seal.Tag(block, plain, tag);
                storing.Write(start, plain);
            }
            else
            {
                using var stage = Stage.Rent();
                var staged = stage.Bytes(size);
                seal.Encrypt(block, plain, staged);
                seal.Tag(block, staged, tag);
                storing.Write(start, staged);
            }
            return;
        }
        if (scatter is { IsContiguous: true } contiguous)
        {
            // Tag the bytes as read, in one shot, where they landed; decrypt in place.
            var target = source.Read(start, new Span<byte>(contiguous.Target(0) + start, size));
            seal.Tag(block, target, tag);
            seal.Decrypt(block, target, target);
            return;
        }
        // From the file: staged in a cache-resident block, tagged, then opened and spread out.
        using (var stage = Stage.Rent())
        {
            var staged = source.Read(start, stage.Bytes(size));
            seal.Tag(block, staged, tag);
            if (scatter is not { } spread) return;
            seal.Decrypt(block, staged, staged);
            spread.Place(stage.Pointer, start, size);
        }
    }

    /// <summary>A staging block rented for one block's work.</summary>
    private readonly struct Stage(NativeBuffer buffer) : IDisposable
    {
        public static Stage Rent() => new(StagingBlocks.Rent());

        public byte* Pointer => buffer.Pointer;

        public Span<byte> Bytes(int size) => new(buffer.Pointer, size);

        public void Dispose() => StagingBlocks.Return(buffer);
    }

    /// <summary>
    /// Blocks of native memory that stage a block on its way from or to the file (rented per block, so nothing is
    /// tied to a thread). Native, not pinned arrays: a restore's first use on each pool thread would otherwise
    /// add megabytes to the pinned heap and set off a full garbage collection in the middle of the request.
    /// </summary>
    private static readonly NativeBufferPool StagingBlocks = new(SealBlockBytes, 2L * Environment.ProcessorCount * SealBlockBytes);
}

/// <summary>
/// Where a payload's bytes come from: memory, or a device read with positional reads (<c>pread</c> on a file,
/// which copies from the page cache without mapping its pages into the process: a fresh process
/// pays a page fault per 4 KiB of a mapping it touches first).
/// </summary>
internal readonly unsafe struct PayloadSource
{
    private readonly byte* _memory;
    private readonly IStorageDevice? _file;
    private readonly long _offset;

    private PayloadSource(byte* memory, IStorageDevice? file, long offset)
    {
        _memory = memory;
        _file = file;
        _offset = offset;
    }

    public static PayloadSource Memory(byte* start) => new(start, null, 0);

    public static PayloadSource File(IStorageDevice file, long offset) => new(null, file, offset);

    public bool IsMemory => _file is null;

    public byte* At(long position) => _memory + position;

    /// <summary>Copies the bytes at <paramref name="position"/> into <paramref name="into"/> (all of it: a file that ends early leaves zeros, which no checksum matches).</summary>
    public Span<byte> Read(long position, Span<byte> into)
    {
        if (_file is null)
        {
            var bytes = new ReadOnlySpan<byte>(_memory + position, into.Length);
            if (!(bytes.Overlaps(into, out int offset) && offset == 0)) bytes.CopyTo(into); // opened in place: nothing to copy
            return into;
        }
        _file.ReadFully(into, _offset + position);
        return into;
    }
}

/// <summary>Where a sealed payload's bytes are stored: a file from an offset (positional writes), or memory.</summary>
internal readonly unsafe struct PayloadSink
{
    private readonly IStorageDevice? _file;
    private readonly long _offset;
    private readonly byte* _memory;

    private PayloadSink(IStorageDevice? file, long offset, byte* memory)
    {
        _file = file;
        _offset = offset;
        _memory = memory;
    }

    public static PayloadSink File(IStorageDevice file, long offset) => new(file, offset, null);

    public static PayloadSink Memory(byte* start) => new(null, 0, start);

    public bool IsMemory => _file is null;

    /// <summary>The memory of <paramref name="size"/> bytes at <paramref name="position"/> (memory sinks only).</summary>
    public Span<byte> At(long position, int size) => new(_memory + position, size);

    public void Write(long position, ReadOnlySpan<byte> bytes) => _file!.Write(bytes, _offset + position);
}
