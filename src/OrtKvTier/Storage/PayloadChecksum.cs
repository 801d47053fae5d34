using System.IO.Hashing;
using static OrtKvTier.Storage.SlotPoolFormat;

namespace OrtKvTier.Storage;

/// <summary>
/// The payload checksum: XxHash128 over the XxHash128 of each <see cref="ChecksumBlockBytes"/> block.
/// Blocks are independent, so large payloads are hashed (and copied) on several threads.
/// </summary>
internal static unsafe class PayloadChecksum
{
    /// <summary>Copy pieces small enough that the hash reads them back from L2 cache.</summary>
    private const int CopyPieceBytes = 64 * 1024;

    /// <summary>Below this many blocks, waking pool threads costs more than it saves.</summary>
    private const int ParallelFromBlocks = 4;

    public static UInt128 Compute(ReadOnlySpan<byte> payload, int parallelism)
    {
        fixed (byte* p = payload)
            return Run(p, null, payload.Length, parallelism);
    }

    /// <summary>Copies <paramref name="length"/> bytes and returns the checksum of the bytes as copied.</summary>
    public static UInt128 CopyAndCompute(byte* source, byte* destination, long length, int parallelism) =>
        Run(source, destination, length, parallelism);

    private static UInt128 Run(byte* source, byte* destination, long length, int parallelism)
    {
        int blocks = (int)((length + ChecksumBlockBytes - 1) / ChecksumBlockBytes);
        if (blocks <= 1)
        {
            Span<byte> single = stackalloc byte[16];
            if (blocks == 1) HashBlock(source, destination, length, 0, single);
            return XxHash128.HashToUInt128(single[..(blocks * 16)]);
        }
        var hashes = new byte[blocks * 16];
        if (blocks >= ParallelFromBlocks && parallelism > 1)
            Parallel.For(0, blocks, new ParallelOptions { MaxDegreeOfParallelism = parallelism },
                b => HashBlock(source, destination, length, b, hashes.AsSpan(b * 16, 16)));
        else
            for (int b = 0; b < blocks; b++) HashBlock(source, destination, length, b, hashes.AsSpan(b * 16, 16));
        return XxHash128.HashToUInt128(hashes);
    }

    private static void HashBlock(byte* source, byte* destination, long length, int block, Span<byte> hashOut)
    {
        long start = (long)block * ChecksumBlockBytes;
        int size = (int)Math.Min(ChecksumBlockBytes, length - start);
        if (destination is null)
        {
            XxHash128.Hash(new ReadOnlySpan<byte>(source + start, size), hashOut);
            return;
        }
        var hash = new XxHash128();
        for (int offset = 0; offset < size; offset += CopyPieceBytes)
        {
            int piece = Math.Min(CopyPieceBytes, size - offset);
            var target = new Span<byte>(destination + start + offset, piece);
            new ReadOnlySpan<byte>(source + start + offset, piece).CopyTo(target);
            hash.Append(target);
        }
        hash.GetCurrentHash(hashOut);
    }
}
