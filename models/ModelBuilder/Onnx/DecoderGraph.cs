namespace OrtKvTier.ModelBuilder.Onnx;

/// <summary>
/// Builds the Llama-style decoder: token embedding; per layer RMSNorm, Q/K/V projections,
/// GroupQueryAttention (com.microsoft) with rotary from cos/sin caches (fused, or in RotaryEmbedding nodes
/// fed by a <c>position_ids</c> input: <see cref="ModelShape.Rotary"/>), output projection,
/// residual, RMSNorm, SwiGLU MLP, residual; final RMSNorm; LM head. Matmuls run in fp32; for an
/// fp16 model the KV cache, attention and logits are fp16 (GQA on CPU takes fp32 and fp16).
/// </summary>
internal sealed class DecoderGraph(ModelShape shape, Stream? externalData = null)
{
    private const float RmsEpsilon = 1e-5f;
    private const double RopeTheta = 10000.0;
    private readonly GraphBuilder _g = new() { ExternalDataFile = shape.ExternalDataFile, ExternalData = externalData };
    private SplitMix64 _rng = new((ulong)shape.Seed);
    private OnnxType IoType => shape.DType == IoDType.Fp16 ? OnnxType.Float16 : OnnxType.Float;

    /// <summary>The model's bytes (with <see cref="ModelShape.ExternalDataFile"/>, the weights went to the external-data stream).</summary>
    public byte[] Build()
    {
        var inputIds = _g.Input("input_ids", OnnxType.Int64, "batch_size", "sequence_length");
        var mask = _g.Input("attention_mask", OnnxType.Int64, "batch_size", "total_sequence_length");
        var positionIds = shape.Rotary == RotaryPlacement.PositionIds ? _g.Input("position_ids", OnnxType.Int64, "batch_size", "sequence_length") : null;

        var one = _g.Int64s("one", [1]);
        var axisOne = _g.Int64s("axis_one", [1], 1);
        var maskSum = _g.Node("ReduceSum", [mask, axisOne], attributes: new Dictionary<string, object> { ["keepdims"] = 0 })[0];
        var seqlensK = Cast(_g.Op("Sub", maskSum, one), OnnxType.Int32);
        var totalLength = Cast(_g.Node("Gather", [_g.Op("Shape", mask), one], attributes: new Dictionary<string, object> { ["axis"] = 0 })[0], OnnxType.Int32);
        var (cos, sin) = RotaryCaches();

        var x = _g.Op("Gather", Weight("model.embed_tokens.weight", 1.0f, shape.Vocab, shape.Hidden), inputIds);
        for (int layer = 0; layer < shape.Layers; layer++)
            x = DecoderLayer(layer, x, seqlensK, totalLength, cos, sin, positionIds);

        x = RmsNorm(x, "model.norm.weight");
        var logits = _g.Op("MatMul", x, Weight("lm_head.weight", 4.0f / MathF.Sqrt(shape.Hidden), shape.Hidden, shape.Vocab));
        _g.Node(shape.DType == IoDType.Fp16 ? "Cast" : "Identity", [logits], outputNames: ["logits"],
            attributes: shape.DType == IoDType.Fp16 ? new Dictionary<string, object> { ["to"] = (int)OnnxType.Float16 } : null);
        _g.Output("logits", IoType, "batch_size", "sequence_length", shape.Vocab);
        return _g.ToModel("ortkvtier_decoder");
    }

    private string DecoderLayer(int layer, string x, string seqlensK, string totalLength, string cos, string sin, string? positionIds)
    {
        string prefix = $"model.layers.{layer}";
        int kvDim = shape.KvHeads * shape.HeadSize;
        var pastKey = _g.Input($"past_key_values.{layer}.key", IoType, "batch_size", shape.KvHeads, "past_sequence_length", shape.HeadSize);
        var pastValue = _g.Input($"past_key_values.{layer}.value", IoType, "batch_size", shape.KvHeads, "past_sequence_length", shape.HeadSize);

        var h = RmsNorm(x, $"{prefix}.input_layernorm.weight");
        var q = ToIo(Linear(h, $"{prefix}.self_attn.q_proj.weight", shape.Hidden, shape.Hidden));
        var k = ToIo(Linear(h, $"{prefix}.self_attn.k_proj.weight", shape.Hidden, kvDim));
        var v = ToIo(Linear(h, $"{prefix}.self_attn.v_proj.weight", shape.Hidden, kvDim));
        if (positionIds is not null)
        {
            q = Rotary(q, positionIds, cos, sin);
            k = Rotary(k, positionIds, cos, sin);
        }
        string[] rotaryInputs = positionIds is null ? [cos, sin] : [];
        var attention = _g.Node("GroupQueryAttention", [q, k, v, pastKey, pastValue, seqlensK, totalLength, .. rotaryInputs],
            domain: "com.microsoft",
            outputNames: [$"{prefix}.attn_out", $"present.{layer}.key", $"present.{layer}.value"],
            attributes: new Dictionary<string, object>
            {
                ["num_heads"] = shape.Heads,
                ["kv_num_heads"] = shape.KvHeads,
                ["scale"] = 1.0f / MathF.Sqrt(shape.HeadSize),
                ["do_rotary"] = positionIds is null ? 1 : 0,
                ["rotary_interleaved"] = 0,
            });
        _g.Output($"present.{layer}.key", IoType, "batch_size", shape.KvHeads, "total_sequence_length", shape.HeadSize);
        _g.Output($"present.{layer}.value", IoType, "batch_size", shape.KvHeads, "total_sequence_length", shape.HeadSize);

        x = _g.Op("Add", x, Linear(FromIo(attention[0]), $"{prefix}.self_attn.o_proj.weight", shape.Hidden, shape.Hidden));

        h = RmsNorm(x, $"{prefix}.post_attention_layernorm.weight");
        var gate = Linear(h, $"{prefix}.mlp.gate_proj.weight", shape.Hidden, shape.Intermediate);
        var up = Linear(h, $"{prefix}.mlp.up_proj.weight", shape.Hidden, shape.Intermediate);
        var silu = _g.Op("Mul", gate, _g.Op("Sigmoid", gate));
        var down = Linear(_g.Op("Mul", silu, up), $"{prefix}.mlp.down_proj.weight", shape.Intermediate, shape.Hidden);
        return _g.Op("Add", x, down);
    }

    /// <summary>Rotary embedding of <c>[batch, sequence, heads × head size]</c> at <paramref name="positionIds"/> (head size from the caches).</summary>
    private string Rotary(string x, string positionIds, string cos, string sin) =>
        _g.Node("RotaryEmbedding", [x, positionIds, cos, sin], domain: "com.microsoft",
            attributes: new Dictionary<string, object> { ["interleaved"] = 0 })[0];

    private string RmsNorm(string x, string weightName)
    {
        var meanSquare = _g.Node("ReduceMean", [_g.Op("Mul", x, x)], attributes: new Dictionary<string, object> { ["axes"] = new long[] { -1 }, ["keepdims"] = 1 })[0];
        var epsilon = _g.Weight($"{weightName}.epsilon", OnnxType.Float, [RmsEpsilon]);
        var normed = _g.Op("Div", x, _g.Op("Sqrt", _g.Op("Add", meanSquare, epsilon)));
        var gain = Enumerable.Range(0, shape.Hidden).Select(_ => 1.0f + 0.1f * _rng.NextGaussian()).ToArray();
        return _g.Op("Mul", normed, _g.Weight(weightName, OnnxType.Float, gain, shape.Hidden));
    }

    private string Linear(string x, string name, int inputs, int outputs) =>
        _g.Op("MatMul", x, Weight(name, 1.0f / MathF.Sqrt(inputs), inputs, outputs));

    private string Weight(string name, float std, int rows, int cols)
    {
        var values = new float[rows * cols];
        for (int i = 0; i < values.Length; i++) values[i] = std * _rng.NextGaussian();
        return _g.Weight(name, OnnxType.Float, values, rows, cols);
    }

    private (string Cos, string Sin) RotaryCaches()
    {
        int half = shape.HeadSize / 2;
        var cos = new float[shape.MaxLength * half];
        var sin = new float[shape.MaxLength * half];
        for (int pos = 0; pos < shape.MaxLength; pos++)
            for (int i = 0; i < half; i++)
            {
                double angle = pos * Math.Pow(RopeTheta, -2.0 * i / shape.HeadSize);
                cos[pos * half + i] = (float)Math.Cos(angle);
                sin[pos * half + i] = (float)Math.Sin(angle);
            }
        return (_g.Weight("cos_cache", IoType, cos, shape.MaxLength, half), _g.Weight("sin_cache", IoType, sin, shape.MaxLength, half));
    }

    private string ToIo(string x) => shape.DType == IoDType.Fp16 ? Cast(x, OnnxType.Float16) : x;

    private string FromIo(string x) => shape.DType == IoDType.Fp16 ? Cast(x, OnnxType.Float) : x;

    private string Cast(string x, OnnxType to) =>
        _g.Node("Cast", [x], attributes: new Dictionary<string, object> { ["to"] = (int)to })[0];
}
