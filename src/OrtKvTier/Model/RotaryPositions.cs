namespace OrtKvTier.Model;

/// <summary>
/// How a model rotates keys by position (RoPE), read from its graph: the cos and sin tables it feeds its rotary nodes
/// (<c>[positions, rotary_dim / 2]</c>) and whether pairs are interleaved or split in halves. Keys stored in the past are
/// already rotated; since a rotation by p + Δ is the rotation by Δ after the one by p, a key moves to another position
/// by the table's row for Δ alone.
/// </summary>
internal sealed class RotaryPositions
{
    private RotaryPositions(float[] cos, float[] sin, int positions, int half, bool interleaved)
    {
        Cos = cos;
        Sin = sin;
        Positions = positions;
        Half = half;
        Interleaved = interleaved;
    }

    /// <summary>Row p of the cos table: cos(p·θ_i) for each of <see cref="Half"/> frequencies.</summary>
    public float[] Cos { get; }
    public float[] Sin { get; }
    /// <summary>Rows of the tables: the farthest a key can move.</summary>
    public int Positions { get; }
    /// <summary>Frequencies: half the rotary dimension (the head's first <c>2 × Half</c> channels rotate, the rest do not).</summary>
    public int Half { get; }
    /// <summary>Whether channels 2i and 2i+1 form a pair (else i and i + Half).</summary>
    public bool Interleaved { get; }

    /// <summary>The model's rotary tables, or null with why its keys cannot be moved exactly.</summary>
    public static RotaryPositions? From(OnnxModelFile graph, int headSize, out string? refusal)
    {
        refusal = null;
        var uses = graph.RotaryUses;
        if (uses.Count == 0)
        {
            refusal = "its graph applies no rotary position embedding the cache can read (no GroupQueryAttention with do_rotary, no RotaryEmbedding): its positions cannot be moved";
            return null;
        }
        if (graph.Uses("", "If") || graph.Uses("", "Loop"))
        {
            refusal = "its graph switches between computations (If or Loop nodes, as LongRoPE exports switch rotary tables by length): a key's rotation depends on more than its position";
            return null;
        }
        var first = uses[0];
        if (uses.Any(u => u.Cos != first.Cos || u.Sin != first.Sin || u.Interleaved != first.Interleaved))
        {
            refusal = "its rotary nodes use different tables or pairings";
            return null;
        }
        if (graph.Table(first.Cos) is not var (cos, cosDims) || graph.Table(first.Sin) is not var (sin, sinDims))
        {
            refusal = $"its rotary tables ({first.Cos}, {first.Sin}) are not constant tables inside the ONNX file (computed, or external data)";
            return null;
        }
        if (!cosDims.SequenceEqual(sinDims) || cosDims[1] * 2 > headSize || cosDims[1] < 1)
        {
            refusal = $"its rotary tables are [{string.Join(", ", cosDims)}] and [{string.Join(", ", sinDims)}]; a head of {headSize} needs two equal [positions, at most {headSize / 2}] tables";
            return null;
        }
        return new RotaryPositions(cos, sin, (int)cosDims[0], (int)cosDims[1], first.Interleaved);
    }
}
