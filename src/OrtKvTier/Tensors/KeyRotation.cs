using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// Moves rotated keys by Δ positions: each pair of channels (i, i + Half, or 2i, 2i + 1 when interleaved) turns by
/// the angle of table row |Δ| (sin negated for a move back), which is what computing them at the new position gives up to
/// rounding. Channels past the rotary dimension do not move. Values carry no position and are copied as they are.
/// </summary>
internal static class KeyRotation
{
    /// <summary>Rotates <paramref name="rows"/> key rows of <paramref name="headSize"/> elements (fp16 or fp32) in place by <paramref name="delta"/> positions.</summary>
    public static void Rotate(Span<byte> keys, int rows, int headSize, int elementSize, RotaryPositions rotary, int delta)
    {
        int distance = Math.Abs(delta);
        if (distance >= rotary.Positions)
            throw new ArgumentOutOfRangeException(nameof(delta), delta, $"The model's rotary tables have {rotary.Positions} positions; a key cannot move {distance}.");
        if (delta == 0) return;
        var cos = rotary.Cos.AsSpan(distance * rotary.Half, rotary.Half);
        var sin = rotary.Sin.AsSpan(distance * rotary.Half, rotary.Half);
        float sign = delta < 0 ? -1 : 1;
        Span<float> row = stackalloc float[headSize];
        for (int r = 0; r < rows; r++)
        {
            var bytes = keys.Slice(r * headSize * elementSize, headSize * elementSize);
            if (elementSize == 2) System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes), row);
            else System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes).CopyTo(row);
            for (int i = 0; i < rotary.Half; i++)
            {
                int a = rotary.Interleaved ? 2 * i : i, b = rotary.Interleaved ? 2 * i + 1 : i + rotary.Half;
                float x = row[a], y = row[b], c = cos[i], s = sign * sin[i];
                row[a] = x * c - y * s;
                row[b] = y * c + x * s;
            }
            if (elementSize == 2) System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(row, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(bytes));
            else row.CopyTo(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(bytes));
        }
    }
}
