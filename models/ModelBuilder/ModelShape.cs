namespace OrtKvTier.ModelBuilder;

/// <summary>Element type of the model's inputs, outputs and KV cache.</summary>
public enum IoDType
{
    /// <summary>32-bit float.</summary>
    Fp32,
    /// <summary>16-bit float (the KV cache and logits are fp16; matmuls run in fp32 inside).</summary>
    Fp16,
}

/// <summary>Where the decoder applies rotary position embeddings.</summary>
public enum RotaryPlacement
{
    /// <summary>Fused into GroupQueryAttention (<c>do_rotary=1</c>); positions come from the attention mask (GenAI's CPU and CUDA exports).</summary>
    InAttention,
    /// <summary>In <c>RotaryEmbedding</c> nodes (com.microsoft) fed by a <c>position_ids</c> input (GenAI's builder when rotary is not fused, e.g. DirectML exports).</summary>
    PositionIds,
}

/// <summary>
/// The shape of a Llama-style decoder the builder writes. <see cref="Vocab"/> counts every token:
/// 256 byte symbols, learned and synthetic merges, and the special tokens.
/// </summary>
public sealed record ModelShape
{
    /// <summary>Decoder layers.</summary>
    public int Layers { get; init; } = 2;
    /// <summary>Hidden size; must equal <see cref="Heads"/> × <see cref="HeadSize"/>.</summary>
    public int Hidden { get; init; } = 64;
    /// <summary>Query heads.</summary>
    public int Heads { get; init; } = 4;
    /// <summary>Key/value heads (grouped-query attention); divides <see cref="Heads"/>.</summary>
    public int KvHeads { get; init; } = 2;
    /// <summary>Size of one head; GroupQueryAttention on CPU needs a multiple of 16.</summary>
    public int HeadSize { get; init; } = 16;
    /// <summary>MLP inner size.</summary>
    public int Intermediate { get; init; } = 128;
    /// <summary>Vocabulary size, at least 256 + the special tokens + 1.</summary>
    public int Vocab { get; init; } = 512;
    /// <summary>Context length: rotary cache rows and the search max_length.</summary>
    public int MaxLength { get; init; } = 4096;
    /// <summary>Element type of inputs, outputs and KV.</summary>
    public IoDType DType { get; init; } = IoDType.Fp32;
    /// <summary>Whether genai_config.json asks for one shared past/present buffer.</summary>
    public bool SharedBuffer { get; init; }
    /// <summary>Where rotary embeddings are applied. Default: fused into attention.</summary>
    public RotaryPlacement Rotary { get; init; } = RotaryPlacement.InAttention;
    /// <summary>When set, every weight is stored in this external-data file beside <c>model.onnx</c> (like <c>model.onnx.data</c> or Optimum's <c>model.onnx_data</c>); null keeps them inside.</summary>
    public string? ExternalDataFile { get; init; }
    /// <summary>Seed for weights; the same shape and seed give the same bytes.</summary>
    public int Seed { get; init; } = 1234;

    /// <summary>The shipped tiny fp32 model.</summary>
    public static ModelShape Tiny => new();

    /// <summary>The shipped tiny fp16 model.</summary>
    public static ModelShape TinyFp16 => new() { DType = IoDType.Fp16 };

    /// <summary>A bench-size model (about 110M parameters, realistic KV shape: 4 kv heads × 64).</summary>
    public static ModelShape Bench => new()
    {
        Layers = 12, Hidden = 768, Heads = 12, KvHeads = 4, HeadSize = 64, Intermediate = 2048,
        Vocab = 32000, MaxLength = 4096, DType = IoDType.Fp16,
    };

    /// <summary>A model of about 1.4 GB of fp32 weights in an external-data file (what load-time figures are measured on).</summary>
    public static ModelShape Large => new()
    {
        Layers = 6, Hidden = 2048, Heads = 16, KvHeads = 4, HeadSize = 128, Intermediate = 4096,
        Vocab = 32000, MaxLength = 4096, DType = IoDType.Fp16, ExternalDataFile = "model.onnx.data",
    };

    /// <summary>Throws when the shape cannot make a valid model, saying which field is wrong.</summary>
    public void Validate()
    {
        Require(Layers >= 1, $"Layers must be at least 1; got {Layers}.");
        Require(Heads >= 1 && KvHeads >= 1 && Heads % KvHeads == 0, $"Heads ({Heads}) must be a positive multiple of KvHeads ({KvHeads}).");
        Require(HeadSize >= 2 && HeadSize % 2 == 0, $"HeadSize must be even and at least 2; got {HeadSize}.");
        Require(Hidden == Heads * HeadSize, $"Hidden ({Hidden}) must equal Heads × HeadSize ({Heads} × {HeadSize} = {Heads * HeadSize}).");
        Require(Intermediate >= 1, $"Intermediate must be at least 1; got {Intermediate}.");
        Require(Vocab >= ByteTokens + SpecialTokens.All.Length + 1,
            $"Vocab must be at least {ByteTokens + SpecialTokens.All.Length + 1} (256 bytes, {SpecialTokens.All.Length} specials, one merge); got {Vocab}.");
        Require(MaxLength >= 2, $"MaxLength must be at least 2; got {MaxLength}.");
        Require(ExternalDataFile is null || (ExternalDataFile.Length > 0 && ExternalDataFile == Path.GetFileName(ExternalDataFile) && ExternalDataFile != "model.onnx"),
            $"ExternalDataFile must be a plain file name other than model.onnx; got '{ExternalDataFile}'.");
    }

    internal const int ByteTokens = 256;

    private static void Require(bool condition, string message)
    {
        if (!condition) throw new ArgumentException(message);
    }
}
