using System.IO.Hashing;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Tests.Support;

/// <summary>
/// Deterministic chunk contents: keys from (seed, index), and token ids and payload bytes that
/// can be regenerated from the key alone, so any byte served can be checked. Shared with the child process.
/// </summary>
internal static class TestPayloads
{
    /// <summary>4 layers × 2 kv heads × 64 head size, fp16, 32-token chunks: 64 KiB payloads.</summary>
    public static SlotPoolIdentity Identity { get; } =
        SlotPoolIdentity.For(new ModelFingerprint(new UInt128(0x0123456789abcdef, 0xfedcba9876543210)), new KvShape(4, 2, 64, 2), chunkTokens: 32);

    public static ChunkKey Key(int seed, long index)
    {
        Span<byte> bytes = stackalloc byte[12];
        BitConverter.TryWriteBytes(bytes, seed);
        BitConverter.TryWriteBytes(bytes[4..], index);
        return new ChunkKey(XxHash128.HashToUInt128(bytes));
    }

    public static int[] Tokens(ChunkKey key, int count = 32)
    {
        var state = (ulong)key.Value ^ 0x70C3;
        var tokens = new int[count];
        for (int i = 0; i < count; i++) tokens[i] = (int)(Next(ref state) % 50000);
        return tokens;
    }

    public static byte[] Payload(ChunkKey key, int length = 64 * 1024)
    {
        var state = (ulong)(key.Value >> 64) ^ (ulong)key.Value;
        var bytes = new byte[length];
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(bytes.AsSpan(0, length / 8 * 8));
        for (int i = 0; i < words.Length; i++) words[i] = Next(ref state);
        return bytes;
    }

    private static ulong Next(ref ulong state)
    {
        ulong z = state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
