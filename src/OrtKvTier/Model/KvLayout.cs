using Microsoft.ML.OnnxRuntime.Tensors;

namespace OrtKvTier.Model;

/// <summary>Element type of the past-key-value tensors.</summary>
public enum KvElementType
{
    /// <summary>32-bit float.</summary>
    Float32,
    /// <summary>IEEE half.</summary>
    Float16,
}

/// <summary>
/// The shape of a model's KV that stored bytes depend on: layers, kv heads, head size and element size. The one
/// identity of a layout: the model fingerprint hashes <see cref="Key"/>, a slot pool and the remote tier check it.
/// </summary>
internal readonly record struct KvShape(int Layers, int KvHeads, int HeadSize, int ElementSize)
{
    /// <summary>Like <c>24x2x64:fp16</c> (hashed into the model fingerprint: never change it).</summary>
    public string Key => $"{Layers}x{KvHeads}x{HeadSize}:{ElementName}";

    /// <summary>Like <c>24x2x64 fp16</c>.</summary>
    public string Text => $"{Layers}x{KvHeads}x{HeadSize} {ElementName}";

    public string ElementName => ElementSize switch { 2 => "fp16", 4 => "fp32", _ => $"{ElementSize}-byte" };

    /// <summary>Bytes one token occupies across all layers, keys and values.</summary>
    public long BytesPerToken => 2L * Layers * KvHeads * HeadSize * ElementSize;

    /// <summary>Throws when a field is out of range.</summary>
    public void Validate()
    {
        if (Layers < 1 || KvHeads < 1 || HeadSize < 1)
            throw new ArgumentException($"Layers, KvHeads and HeadSize must be positive; got {Layers}, {KvHeads}, {HeadSize}.");
        if (ElementSize is not (2 or 4))
            throw new ArgumentException($"ElementSize must be 2 (fp16) or 4 (fp32); got {ElementSize}.");
    }
}

/// <summary>
/// How a model lays out its past key/value tensors: one key and one value tensor per layer, each
/// <c>[batch, KvHeads, tokens, HeadSize]</c>. In shared-buffer mode the token axis is always
/// <see cref="MaxLength"/> long and the same buffer is bound as past and present.
/// </summary>
public sealed record KvLayout
{
    /// <summary>Decoder layers.</summary>
    public required int Layers { get; init; }
    /// <summary>Key/value heads.</summary>
    public required int KvHeads { get; init; }
    /// <summary>Size of one head.</summary>
    public required int HeadSize { get; init; }
    /// <summary>Element type.</summary>
    public required KvElementType ElementType { get; init; }
    /// <summary>Whether past and present share one max-length buffer.</summary>
    public required bool SharedBuffer { get; init; }
    /// <summary>Longest sequence, prompt included.</summary>
    public required int MaxLength { get; init; }
    /// <summary>Past key input names, one per layer.</summary>
    public required IReadOnlyList<string> PastKeyNames { get; init; }
    /// <summary>Past value input names, one per layer.</summary>
    public required IReadOnlyList<string> PastValueNames { get; init; }
    /// <summary>Present key output names, one per layer.</summary>
    public required IReadOnlyList<string> PresentKeyNames { get; init; }
    /// <summary>Present value output names, one per layer.</summary>
    public required IReadOnlyList<string> PresentValueNames { get; init; }

    /// <summary>Bytes of one element.</summary>
    public int ElementSize => ElementType == KvElementType.Float16 ? 2 : 4;

    /// <summary>ONNX Runtime's element type.</summary>
    public TensorElementType OrtElementType => ElementType == KvElementType.Float16 ? TensorElementType.Float16 : TensorElementType.Float;

    /// <summary>Bytes one token occupies in one head of one tensor (<c>HeadSize × element size</c>).</summary>
    public int BytesPerHeadToken => HeadSize * ElementSize;

    /// <summary>Bytes one token occupies across all layers, keys and values.</summary>
    public long BytesPerToken => Shape.BytesPerToken;

    /// <summary>What stored bytes depend on: shape and element type (names and mode excluded).</summary>
    internal KvShape Shape => new(Layers, KvHeads, HeadSize, ElementSize);

    /// <summary>The identity that matters for stored bytes, like <c>24x2x64:fp16</c>.</summary>
    public string ShapeKey => Shape.Key;

    /// <summary>A short human description.</summary>
    public override string ToString() =>
        $"{Layers} layers × {KvHeads} kv heads × {HeadSize} head size, {Shape.ElementName}, " +
        $"{(SharedBuffer ? "shared buffer" : "growing past")}, max length {MaxLength}";
}
