using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// Encodes a chunk (<see cref="ChunkLayout"/>: runs of <c>C</c> token rows × <c>D</c> elements, one per layer, key or
/// value, and kv head) in 8 or 4 bits, and decodes it straight into the past tensors. Each run is stored as its group
/// minimums, then its group scales (both at the model's element width, fp16 or fp32), then its codes (row-major; 4-bit
/// codes two to a byte, the even element in the low nibble). Keys are grouped per channel over the chunk's tokens (their
/// channels have offsets and outliers of their own), values per token over the head. A value is <c>min + code × scale</c>;
/// the minimum is stored rounded down and the scale rounded up, so every code is within range and the error of an
/// element is at most half a scale.
/// </summary>
internal sealed unsafe class KvCodec
{
    private readonly int _rows, _width, _elementSize, _kvHeads, _levels;

    private KvCodec(KvEncoding encoding, KvShape shape, int chunkTokens)
    {
        Encoding = encoding;
        Bits = encoding == KvEncoding.Int8 ? 8 : 4;
        _levels = (1 << Bits) - 1;
        _rows = chunkTokens;
        _width = shape.HeadSize;
        _elementSize = shape.ElementSize;
        _kvHeads = shape.KvHeads;
        Runs = 2 * shape.Layers * shape.KvHeads;
        ExactRunBytes = (long)_rows * _width * _elementSize;
        KeyRunBytes = 2L * _width * _elementSize + CodeBytes;
        ValueRunBytes = 2L * _rows * _elementSize + CodeBytes;
        EncodedBytes = Runs / 2 * (KeyRunBytes + ValueRunBytes);
    }

    /// <summary>The codec of <paramref name="encoding"/> for chunks of <paramref name="chunkTokens"/> tokens; null for <see cref="KvEncoding.Exact"/>.</summary>
    public static KvCodec? For(KvEncoding encoding, KvShape shape, int chunkTokens)
    {
        if (encoding == KvEncoding.Exact) return null;
        if (encoding is not (KvEncoding.Int8 or KvEncoding.Int4)) throw new ArgumentOutOfRangeException(nameof(encoding), encoding, "Expected exact, int8 or int4.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunkTokens);
        if (encoding == KvEncoding.Int4 && shape.HeadSize % 2 != 0)
            throw new ArgumentException($"int4 packs two elements to a byte; the head size {shape.HeadSize} is odd. Use int8.");
        return new KvCodec(encoding, shape, chunkTokens);
    }

    public KvEncoding Encoding { get; }

    /// <summary>Bits per code.</summary>
    public int Bits { get; }

    /// <summary>Runs of a chunk: layers × (key, value) × kv heads.</summary>
    public int Runs { get; }

    /// <summary>Bytes of an encoded chunk.</summary>
    public long EncodedBytes { get; }

    /// <summary>Bytes of the chunk it encodes.</summary>
    public long ExactBytes => Runs * ExactRunBytes;

    private long ExactRunBytes { get; }
    private long KeyRunBytes { get; }
    private long ValueRunBytes { get; }
    private long CodeBytes => (long)_rows * _width * Bits / 8;
    private long RowBytes => (long)_width * _elementSize;

    private bool IsKey(int run) => run / _kvHeads % 2 == 0;

    /// <summary>Where run <paramref name="run"/> starts in an encoded chunk.</summary>
    private long EncodedOffset(int run)
    {
        long pairs = run / (2 * _kvHeads), within = run % (2 * _kvHeads);
        long offset = pairs * _kvHeads * (KeyRunBytes + ValueRunBytes);
        return within < _kvHeads ? offset + within * KeyRunBytes : offset + _kvHeads * KeyRunBytes + (within - _kvHeads) * ValueRunBytes;
    }

    /// <summary>Encodes one chunk's <see cref="ExactBytes"/> into <see cref="EncodedBytes"/>; false (nothing usable written) when it holds a value that is not a finite number.</summary>
    public bool Encode(ReadOnlySpan<byte> exact, Span<byte> encoded)
    {
        if (exact.Length != ExactBytes) throw new ArgumentException($"A chunk holds {ExactBytes} bytes; got {exact.Length}.", nameof(exact));
        if (encoded.Length < EncodedBytes) throw new ArgumentException($"An encoded chunk takes {EncodedBytes} bytes; the destination holds {encoded.Length}.", nameof(encoded));
        var values = new float[_rows * _width];
        var mins = new float[Math.Max(_rows, _width)];
        var scales = new float[mins.Length];
        var row = new float[_width];
        var codes = new byte[_width];
        fixed (byte* source = exact)
        fixed (byte* target = encoded)
            for (int run = 0; run < Runs; run++)
            {
                for (int t = 0; t < _rows; t++) ToSingle(source + run * ExactRunBytes + t * RowBytes, values.AsSpan(t * _width, _width));
                bool key = IsKey(run);
                int groups = key ? _width : _rows;
                if (!GroupRanges(values, key, mins.AsSpan(0, groups), scales.AsSpan(0, groups))) return false;
                byte* output = target + EncodedOffset(run);
                StoreParameters(mins.AsSpan(0, groups), output);
                StoreParameters(scales.AsSpan(0, groups), output + (long)groups * _elementSize);
                byte* codeStart = output + 2L * groups * _elementSize;
                for (int t = 0; t < _rows; t++)
                {
                    var x = values.AsSpan(t * _width, _width);
                    if (key) Quantize(x, mins.AsSpan(0, _width), scales.AsSpan(0, _width), row, codes);
                    else Quantize(x, mins[t], scales[t], row, codes);
                    Pack(codes, codeStart + t * (long)_width * Bits / 8);
                }
            }
        return true;
    }

    /// <summary>
    /// Decodes an encoded chunk to where <paramref name="scatter"/> says: run i to its target, the first
    /// <see cref="PayloadScatter.CopyBytes"/> bytes of each (a contiguous destination takes the whole chunk in the chunk layout).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Decode(ReadOnlySpan<byte> encoded, PayloadScatter scatter)
    {
        if (encoded.Length < EncodedBytes) throw new ArgumentException($"An encoded chunk takes {EncodedBytes} bytes; got {encoded.Length}.", nameof(encoded));
        bool contiguous = scatter.IsContiguous;
        if (contiguous ? scatter.CopyBytes < ExactBytes : scatter.RunBytes != ExactRunBytes || scatter.Length != ExactBytes)
            throw new ArgumentException($"The destination does not take a chunk of {Runs} runs of {ExactRunBytes} bytes.", nameof(scatter));
        int rows = contiguous ? _rows : (int)(scatter.CopyBytes / RowBytes);
        Span<float> row = stackalloc float[_width];
        Span<byte> codes = stackalloc byte[_width];
        Span<float> mins = stackalloc float[Math.Max(_rows, _width)];
        Span<float> scales = stackalloc float[mins.Length];
        fixed (byte* source = encoded)
            for (int run = 0; run < Runs; run++)
            {
                byte* target = contiguous ? scatter.Target(0) + run * ExactRunBytes : scatter.Target(run);
                if (target is null) continue;
                bool key = IsKey(run);
                int groups = key ? _width : _rows;
                byte* input = source + EncodedOffset(run);
                LoadParameters(input, mins[..groups]);
                LoadParameters(input + (long)groups * _elementSize, scales[..groups]);
                byte* codeStart = input + 2L * groups * _elementSize;
                for (int t = 0; t < rows; t++)
                {
                    Unpack(codeStart + t * (long)_width * Bits / 8, codes);
                    Widen(codes, row);
                    if (key) TensorPrimitives.FusedMultiplyAdd(row, scales[.._width], mins[.._width], row);
                    else
                    {
                        TensorPrimitives.Multiply(row, scales[t], row);
                        TensorPrimitives.Add(row, mins[t], row);
                    }
                    FromSingle(row, target + t * RowBytes);
                }
            }
    }

    /// <summary>
    /// Each group's minimum (rounded down to the stored width) and scale (rounded up) over <paramref name="values"/>
    /// (<c>C × D</c>): per column for keys, per row for values. False when a group holds a NaN or an infinity.
    /// </summary>
    private bool GroupRanges(float[] values, bool key, Span<float> mins, Span<float> scales)
    {
        if (key)
        {
            var lows = mins[.._width];
            var highs = scales[.._width];
            values.AsSpan(0, _width).CopyTo(lows);
            values.AsSpan(0, _width).CopyTo(highs);
            for (int t = 1; t < _rows; t++)
            {
                var x = values.AsSpan(t * _width, _width);
                TensorPrimitives.Min(lows, x, lows);
                TensorPrimitives.Max(highs, x, highs);
            }
        }
        else
            for (int t = 0; t < _rows; t++)
            {
                var x = values.AsSpan(t * _width, _width);
                mins[t] = TensorPrimitives.Min(x);
                scales[t] = TensorPrimitives.Max(x);
            }
        for (int g = 0; g < mins.Length; g++)
        {
            if (!float.IsFinite(mins[g]) || !float.IsFinite(scales[g]) || !float.IsFinite(scales[g] - mins[g])) return false;
            float low = StoredDown(mins[g]);
            mins[g] = low;
            scales[g] = StoredUp((scales[g] - low) / _levels);
        }
        return true;
    }

    private void Quantize(ReadOnlySpan<float> x, ReadOnlySpan<float> mins, ReadOnlySpan<float> scales, Span<float> scratch, Span<byte> codes)
    {
        TensorPrimitives.Subtract(x, mins, scratch);
        for (int i = 0; i < scratch.Length; i++) codes[i] = Code(scratch[i], scales[i]);
    }

    private void Quantize(ReadOnlySpan<float> x, float min, float scale, Span<float> scratch, Span<byte> codes)
    {
        TensorPrimitives.Subtract(x, min, scratch);
        for (int i = 0; i < scratch.Length; i++) codes[i] = Code(scratch[i], scale);
    }

    private byte Code(float aboveMin, float scale) => scale > 0 ? (byte)Math.Clamp(MathF.Round(aboveMin / scale), 0, _levels) : (byte)0;

    /// <summary>The largest stored-width value at or below <paramref name="x"/>.</summary>
    private float StoredDown(float x)
    {
        if (_elementSize == 4) return x;
        var h = (Half)x;
        if ((float)h > x) h = Half.BitDecrement(h);
        return (float)h;
    }

    /// <summary>The smallest stored-width value at or above <paramref name="x"/>.</summary>
    private float StoredUp(float x)
    {
        if (_elementSize == 4) return x;
        var h = (Half)x;
        if ((float)h < x) h = Half.BitIncrement(h);
        return (float)h;
    }

    private void StoreParameters(ReadOnlySpan<float> values, byte* destination)
    {
        if (_elementSize == 4) values.CopyTo(new Span<float>(destination, values.Length));
        else TensorPrimitives.ConvertToHalf(values, new Span<Half>(destination, values.Length));
    }

    private void LoadParameters(byte* source, Span<float> values) => ToSingle(source, values);

    private void ToSingle(byte* source, Span<float> values)
    {
        if (_elementSize == 4) new ReadOnlySpan<float>(source, values.Length).CopyTo(values);
        else TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, values.Length), values);
    }

    private void FromSingle(ReadOnlySpan<float> values, byte* destination)
    {
        if (_elementSize == 4) values.CopyTo(new Span<float>(destination, values.Length));
        else TensorPrimitives.ConvertToHalf(values, new Span<Half>(destination, values.Length));
    }

    private void Pack(ReadOnlySpan<byte> codes, byte* destination)
    {
        if (Bits == 8)
        {
            codes.CopyTo(new Span<byte>(destination, codes.Length));
            return;
        }
        for (int i = 0; i < codes.Length; i += 2) destination[i / 2] = (byte)(codes[i] | codes[i + 1] << 4);
    }

    private void Unpack(byte* source, Span<byte> codes)
    {
        if (Bits == 8)
        {
            new ReadOnlySpan<byte>(source, codes.Length).CopyTo(codes);
            return;
        }
        for (int i = 0; i < codes.Length; i += 2)
        {
            byte b = source[i / 2];
            codes[i] = (byte)(b & 0xF);
            codes[i + 1] = (byte)(b >> 4);
        }
    }

    /// <summary>Bytes to floats, 32 at a time where the hardware has 256-bit vectors.</summary>
    private static void Widen(ReadOnlySpan<byte> codes, Span<float> values)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 32 <= codes.Length; i += 32)
            {
                var (low, high) = Vector256.Widen(Vector256.Create(codes.Slice(i, 32)));
                var (a, b) = Vector256.Widen(low);
                var (c, d) = Vector256.Widen(high);
                Vector256.ConvertToSingle(a).CopyTo(values.Slice(i, 8));
                Vector256.ConvertToSingle(b).CopyTo(values.Slice(i + 8, 8));
                Vector256.ConvertToSingle(c).CopyTo(values.Slice(i + 16, 8));
                Vector256.ConvertToSingle(d).CopyTo(values.Slice(i + 24, 8));
            }
        for (; i < codes.Length; i++) values[i] = codes[i];
    }
}
