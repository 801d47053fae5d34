namespace OrtKvTier.Keys;

/// <summary>A 128-bit key naming one chunk of KV bytes (for a prefix cache: the chained hash of all tokens up to the chunk's end).</summary>
public readonly record struct ChunkKey(UInt128 Value)
{
    /// <summary>32 hex digits.</summary>
    public override string ToString() => Value.ToString("x32");
}
