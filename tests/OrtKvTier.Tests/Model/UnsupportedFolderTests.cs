using System.Text.Json.Nodes;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder.Onnx;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Model;

/// <summary>
/// A folder the loop cannot serve is refused by <see cref="KvModel.Load"/>, naming the feature, never found
/// mid-generation; one it can serve whatever its attention is loads.
/// </summary>
public sealed class UnsupportedFolderTests : IDisposable
{
    private readonly TempDir _temp = new();

    public static TheoryData<string, string, string> ConfigFeatures() => new()
    {
        // JSON path to add, JSON value, words the error must contain
        { "model.vision", """{"filename": "vision.onnx"}""", "multi-model pipeline" },
        { "model.decoder.pipeline", """[{"model_a": {"filename": "a.onnx"}}]""", "pipeline of several ONNX models" },
        { "model.decoder.inputs.past_names", "\"past_%d\"", "GPT-2" },
        { "search.num_beams", "4", "Beam search" },
        { "search.num_return_sequences", "3", "num_return_sequences" },
    };

    [Theory]
    [MemberData(nameof(ConfigFeatures))]
    public void AConfigFeatureTheLoopCannotServeIsRefusedAtLoad(string path, string json, string words)
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"), config =>
        {
            var parts = path.Split('.');
            JsonNode node = config;
            foreach (var part in parts[..^1]) node = node[part]!;
            node[parts[^1]] = JsonNode.Parse(json);
        });
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
        Assert.Contains(words, e.Message);
        Assert.Contains(path, e.Message);
    }

    public static TheoryData<string, string> GraphFeatures() => new()
    {
        // graph variant, words the error must contain
        { "bf16-kv", "bf16 KV cache" },
        { "int8-kv", "quantized KV cache" },
        { "kv-scales", "quantized KV cache" },
        { "inputs-embeds", "inputs_embeds" },
        { "unknown-input", "token_type_ids" },
        { "unknown-output", "hidden_states" },
        { "combined-past", "GPT-2" },
    };

    [Theory]
    [MemberData(nameof(GraphFeatures))]
    public void AGraphFeatureTheLoopCannotServeIsRefusedAtLoadNamingIt(string variant, string words)
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"));
        File.WriteAllBytes(Path.Combine(folder, "model.onnx"), PassThroughDecoder(variant));
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
        Assert.Contains(words, e.Message);
        Assert.Contains("GenAI", e.Message);
    }

    [Fact]
    public void AGraphWithoutGroupQueryAttentionNeedsNoHeadSizeMultipleButCannotShareTheBuffer()
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("m"), c => c["model"]!["decoder"]!["head_size"] = 24);
        File.WriteAllBytes(Path.Combine(folder, "model.onnx"), PassThroughDecoder("plain", headSize: 24));
        using (var model = KvModel.Load(folder)) Assert.Equal(24, model.Layout.HeadSize);

        var shared = TestPaths.WithSharedBuffer(folder, _temp.Sub("shared"), shared: true);
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(shared));
        Assert.Contains("past_present_share_buffer", e.Message);

        var gqa = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("gqa"), c => c["model"]!["decoder"]!["head_size"] = 24);
        Assert.Contains("multiple of 16", Assert.Throws<ModelFolderException>(() => KvModel.Load(gqa)).Message);
    }

    /// <summary>
    /// A 2-layer decoder-shaped graph without attention (presents pass the past through, logits are the token ids
    /// cast to float), in the tiny model's names, with one <paramref name="variant"/> the loop does not serve.
    /// </summary>
    private static byte[] PassThroughDecoder(string variant, int headSize = 16)
    {
        var g = new GraphBuilder();
        var kvType = variant switch { "bf16-kv" => OnnxType.BFloat16, "int8-kv" => OnnxType.Int8, _ => OnnxType.Float };
        var ids = variant == "inputs-embeds" ? g.Input("inputs_embeds", OnnxType.Float, "batch", "sequence", 64) : g.Input("input_ids", OnnxType.Int64, "batch", "sequence");
        g.Input("attention_mask", OnnxType.Int64, "batch", "total");
        for (int layer = 0; layer < 2; layer++)
            foreach (var kind in new[] { "key", "value" })
            {
                Dim[] shape = variant == "combined-past" ? [2, "batch", 2, "past", headSize] : ["batch", 2, "past", headSize];
                var past = g.Input($"past_key_values.{layer}.{kind}", kvType, shape);
                g.Node("Identity", [past], outputNames: [$"present.{layer}.{kind}"]);
                g.Output($"present.{layer}.{kind}", kvType, shape);
                if (variant == "kv-scales")
                {
                    var scale = g.Input($"past_key_values.{layer}.{kind}_scale", OnnxType.Float, "batch", 2);
                    g.Node("Identity", [scale], outputNames: [$"present.{layer}.{kind}_scale"]);
                }
            }
        if (variant == "unknown-input") g.Input("token_type_ids", OnnxType.Int64, "batch", "sequence");
        var asFloat = variant == "inputs-embeds" ? ids : g.Node("Cast", [ids], attributes: new Dictionary<string, object> { ["to"] = (int)OnnxType.Float })[0];
        var logits = variant == "inputs-embeds" ? asFloat : g.Op("Unsqueeze", asFloat, g.Int64s("axes", [2], 1));
        g.Node("Identity", [logits], outputNames: ["logits"]);
        g.Output("logits", OnnxType.Float, "batch", "sequence", variant == "inputs-embeds" ? 64 : 1);
        if (variant == "unknown-output")
        {
            g.Node("Identity", [logits], outputNames: ["hidden_states"]);
            g.Output("hidden_states", OnnxType.Float, "batch", "sequence", variant == "inputs-embeds" ? 64 : 1);
        }
        return g.ToModel("pass_through");
    }

    public void Dispose() => _temp.Dispose();
}
