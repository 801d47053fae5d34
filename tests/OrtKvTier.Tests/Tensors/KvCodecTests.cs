using System.Runtime.InteropServices;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tests.Tensors;

/// <summary>The 8- and 4-bit chunk encodings: every element within half a step of its group, sizes as documented, partial chunks.</summary>
public sealed unsafe class KvCodecTests
{
    private static readonly KvShape Fp16 = new(Layers: 3, KvHeads: 2, HeadSize: 64, ElementSize: 2);
    private static readonly KvShape Fp32 = new(Layers: 2, KvHeads: 3, HeadSize: 32, ElementSize: 4);
    private const int Chunk = 32;

    /// <summary>Values like KV: per-channel offsets and scales (outlier channels), one far outlier.</summary>
    private static float[] Values(KvShape shape, int seed)
    {
        var random = new Random(seed);
        int runs = 2 * shape.Layers * shape.KvHeads;
        var values = new float[runs * Chunk * shape.HeadSize];
        for (int r = 0; r < runs; r++)
        {
            var offsets = Enumerable.Range(0, shape.HeadSize).Select(_ => (float)(random.NextDouble() * 6 - 3)).ToArray();
            var scales = Enumerable.Range(0, shape.HeadSize).Select(d => d % 13 == 0 ? 8f : 0.5f + (float)random.NextDouble()).ToArray();
            for (int t = 0; t < Chunk; t++)
                for (int d = 0; d < shape.HeadSize; d++)
                    values[(r * Chunk + t) * shape.HeadSize + d] = offsets[d] + scales[d] * (float)(random.NextDouble() * 2 - 1);
        }
        values[5] = 40f;
        return values;
    }

    private static byte[] Bytes(KvShape shape, float[] values) => shape.ElementSize == 2
        ? MemoryMarshal.AsBytes(values.Select(v => (Half)v).ToArray().AsSpan()).ToArray()
        : MemoryMarshal.AsBytes(values.AsSpan()).ToArray();

    private static float[] Floats(KvShape shape, byte[] bytes) => shape.ElementSize == 2
        ? MemoryMarshal.Cast<byte, Half>(bytes).ToArray().Select(h => (float)h).ToArray()
        : MemoryMarshal.Cast<byte, float>(bytes).ToArray();

    public static TheoryData<int, KvEncoding> Cases => new() { { 2, KvEncoding.Int8 }, { 2, KvEncoding.Int4 }, { 4, KvEncoding.Int8 }, { 4, KvEncoding.Int4 } };

    [Theory]
    [MemberData(nameof(Cases))]
    public void EveryElementIsWithinHalfAStepOfItsGroup(int elementSize, KvEncoding encoding)
    {
        var shape = elementSize == 2 ? Fp16 : Fp32;
        var codec = KvCodec.For(encoding, shape, Chunk)!;
        var exact = Bytes(shape, Values(shape, seed: 11));
        var source = Floats(shape, exact); // what the model's element type holds
        var encoded = new byte[codec.EncodedBytes];
        Assert.True(codec.Encode(exact, encoded));
        var decoded = new byte[exact.Length];
        fixed (byte* d = decoded) codec.Decode(encoded, PayloadScatter.Contiguous(d, decoded.Length));
        var result = Floats(shape, decoded);

        int levels = encoding == KvEncoding.Int8 ? 255 : 15, width = shape.HeadSize;
        for (int run = 0; run < codec.Runs; run++)
        {
            bool key = run / shape.KvHeads % 2 == 0;
            for (int t = 0; t < Chunk; t++)
                for (int d = 0; d < width; d++)
                {
                    int at = (run * Chunk + t) * width + d;
                    var group = key ? Enumerable.Range(0, Chunk).Select(u => source[(run * Chunk + u) * width + d]) : source.AsSpan((run * Chunk + t) * width, width).ToArray();
                    float step = (group.Max() - group.Min()) / levels;
                    // Half a step, the stored minimum and scale rounded outward, and the output's own rounding (fp16: 2^-11 relative).
                    float allowed = step * 0.5f * 1.02f + (elementSize == 2 ? Math.Abs(source[at]) / 1024 + 1e-3f : 1e-5f);
                    Assert.True(Math.Abs(result[at] - source[at]) <= allowed,
                        $"run {run} ({(key ? "key" : "value")}), token {t}, channel {d}: {source[at]} came back as {result[at]}, more than {allowed} away (step {step}).");
                }
        }
    }

    [Fact]
    public void AConstantGroupComesBackExactly()
    {
        var codec = KvCodec.For(KvEncoding.Int4, Fp16, Chunk)!;
        var exact = Bytes(Fp16, Enumerable.Repeat(1.375f, codec.Runs * Chunk * Fp16.HeadSize).ToArray());
        var encoded = new byte[codec.EncodedBytes];
        Assert.True(codec.Encode(exact, encoded));
        var decoded = new byte[exact.Length];
        fixed (byte* d = decoded) codec.Decode(encoded, PayloadScatter.Contiguous(d, decoded.Length));
        Assert.Equal(exact, decoded);
    }

    [Fact]
    public void APartialChunkDecodesItsLeadingRowsIntoEachRunAndLeavesTheRestAlone()
    {
        var codec = KvCodec.For(KvEncoding.Int8, Fp16, Chunk)!;
        var exact = Bytes(Fp16, Values(Fp16, seed: 5));
        var encoded = new byte[codec.EncodedBytes];
        Assert.True(codec.Encode(exact, encoded));
        var whole = new byte[exact.Length];
        fixed (byte* d = whole) codec.Decode(encoded, PayloadScatter.Contiguous(d, whole.Length));

        long runBytes = (long)Chunk * Fp16.HeadSize * 2, rows = 5, rowBytes = Fp16.HeadSize * 2;
        var scattered = new byte[exact.Length * 2];
        Array.Fill(scattered, (byte)0xAB);
        fixed (byte* s = scattered)
        {
            // Runs land 2 × runBytes apart (as in a past tensor with room for more tokens).
            var targets = new nint[codec.Runs];
            for (int r = 0; r < targets.Length; r++) targets[r] = (nint)(s + 2 * r * runBytes);
            codec.Decode(encoded, new PayloadScatter(targets, runBytes, rows * rowBytes));
        }
        for (int r = 0; r < codec.Runs; r++)
        {
            Assert.Equal(whole.AsSpan((int)(r * runBytes), (int)(rows * rowBytes)).ToArray(), scattered.AsSpan((int)(2 * r * runBytes), (int)(rows * rowBytes)).ToArray());
            Assert.All(scattered.AsSpan((int)(2 * r * runBytes + rows * rowBytes), (int)(2 * runBytes - rows * rowBytes)).ToArray(), b => Assert.Equal(0xAB, b));
        }
    }

    [Fact]
    public void Int8OfAnFp16ModelTakesAboutHalfTheBytesAndAQuarterOfAnFp32One()
    {
        var bench = new KvShape(12, 4, 64, 2); // the bench model's layout
        var codec = KvCodec.For(KvEncoding.Int8, bench, Chunk)!;
        Assert.Equal(bench.BytesPerToken * Chunk, codec.ExactBytes);
        // Codes: one byte per element; per run the keys' 64 channel minimums and scales, the values' 32 token ones (fp16 each).
        Assert.Equal(2L * 12 * 4 * (32 * 64) + 12 * 4 * (2 * 64 * 2 + 2 * 32 * 2), codec.EncodedBytes);
        Assert.InRange((double)codec.EncodedBytes / codec.ExactBytes, 0.5, 0.55);
        Assert.InRange((double)KvCodec.For(KvEncoding.Int8, bench with { ElementSize = 4 }, Chunk)!.EncodedBytes / (bench.BytesPerToken * 2 * Chunk), 0.25, 0.3); // fp32 minimums and scales
        Assert.InRange((double)KvCodec.For(KvEncoding.Int4, bench, Chunk)!.EncodedBytes / codec.ExactBytes, 0.25, 0.3);
        Assert.Null(KvCodec.For(KvEncoding.Exact, bench, Chunk));
    }

    [Fact]
    public void WrongSizesAreRefusedSayingWhatWasExpected()
    {
        var codec = KvCodec.For(KvEncoding.Int8, Fp16, Chunk)!;
        var e = Assert.Throws<ArgumentException>(() => codec.Encode(new byte[10], new byte[codec.EncodedBytes]));
        Assert.Contains($"{codec.ExactBytes} bytes", e.Message);
        Assert.Throws<ArgumentException>(() => KvCodec.For(KvEncoding.Int4, Fp16 with { HeadSize = 15 }, Chunk));
        Assert.Equal("int8", KvEncodings.Parse(" INT8 ").Name());
        Assert.Contains("exact, int8 or int4", Assert.Throws<ArgumentException>(() => KvEncodings.Parse("fp8")).Message);
    }
}
