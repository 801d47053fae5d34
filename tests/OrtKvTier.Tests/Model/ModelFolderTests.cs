using System.Text.Json.Nodes;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Model;

public sealed class ModelFolderTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public void ShippedTinyExposesItsLayout()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var layout = model.Layout;
        Assert.Equal((2, 2, 16, KvElementType.Float32, false, 4096), (layout.Layers, layout.KvHeads, layout.HeadSize, layout.ElementType, layout.SharedBuffer, layout.MaxLength));
        Assert.Equal(["past_key_values.0.key", "past_key_values.1.key"], layout.PastKeyNames);
        Assert.Equal(["present.0.value", "present.1.value"], layout.PresentValueNames);
        Assert.Equal(2L * 2 * 2 * 16 * 4, layout.BytesPerToken);
        Assert.Equal(512, model.VocabSize);
        Assert.Equal([507, 511], model.EosTokenIds);

        using var fp16 = KvModel.Load(TestPaths.TinyFp16);
        Assert.Equal(KvElementType.Float16, fp16.Layout.ElementType);
        Assert.NotEqual(model.Fingerprint, fp16.Fingerprint);
    }

    [Fact]
    public void FingerprintIsStableAndChangesWithWeightsConfigAndLayout()
    {
        using var a = KvModel.Load(TestPaths.Tiny);
        var copy = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("copy"));
        using (var b = KvModel.Load(copy)) Assert.Equal(a.Fingerprint, b.Fingerprint);
        // Shared-buffer mode does not change the bytes a KV tensor holds.
        using (var shared = KvModel.Load(TestPaths.Tiny, new KvModelOptions { SharedBuffer = true })) Assert.Equal(a.Fingerprint, shared.Fingerprint);

        var reseeded = TestPaths.Build(_temp.Sub("seed"), ModelShape.Tiny with { Seed = 99 });
        using (var c = KvModel.Load(reseeded)) Assert.NotEqual(a.Fingerprint, c.Fingerprint);

        var edited = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("edited"), cfg => cfg["model"]!["context_length"] = 511);
        using (var d = KvModel.Load(edited)) Assert.NotEqual(a.Fingerprint, d.Fingerprint);

        var wider = TestPaths.Build(_temp.Sub("wider"), ModelShape.Tiny with { KvHeads = 4 });
        using (var e = KvModel.Load(wider)) Assert.NotEqual(a.Fingerprint, e.Fingerprint);
    }

    [Fact]
    public void MissingFilesAreNamed()
    {
        foreach (var file in new[] { "genai_config.json", "model.onnx", "tokenizer.json" })
        {
            var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("no-" + file));
            File.Delete(Path.Combine(folder, file));
            var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
            Assert.Equal(Path.Combine(folder, file), e.File);
            Assert.Contains("no such file", e.Message);
        }
        var missingDir = Assert.Throws<ModelFolderException>(() => KvModel.Load(_temp.Sub("nothing-here")));
        Assert.Contains("no such directory", missingDir.Message);
    }

    public static TheoryData<string, string, string> BadConfigs() => new()
    {
        // edit to genai_config.json, field named in the error, text the error must contain
        { "past_key_names=past.%d.k", "model.decoder.inputs.past_key_names", "'past.0.k', which the graph lacks" },
        { "present_value_names=out.%d.v", "model.decoder.outputs.present_value_names", "'out.0.v', which the graph lacks" },
        { "past_key_names=no_layer_placeholder", "model.decoder.inputs.past_key_names", "a name pattern with %d" },
        { "remove decoder", "model.decoder", "Is this a GenAI decoder folder?" },
        { "remove type", "model.type", "a model type" },
        { "num_key_value_heads=3", "past_key_values.0.key", "3 kv heads" },
        { "head_size=32", "past_key_values.0.key", "head size 32" },
        { "head_size=24", "model.decoder.head_size", "a multiple of 16" },
        { "num_hidden_layers=0", "model.decoder.num_hidden_layers", "a positive integer" },
    };

    [Theory]
    [MemberData(nameof(BadConfigs))]
    public void BadConfigsNameFieldExpectedAndFound(string edit, string field, string text)
    {
        var folder = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("bad"), cfg => Apply(cfg, edit));
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
        Assert.Equal(field, e.Field);
        Assert.Contains(text, e.Message);
        Assert.Contains("expected", e.Message);
        Assert.Contains("found", e.Message);
    }

    [Fact]
    public void HeadSizeTheAttentionKernelRefusesIsReportedBeforeOnnxRuntimeRuns()
    {
        var folder = TestPaths.Build(_temp.Sub("hs24"), ModelShape.Tiny with { Heads = 2, HeadSize = 24, Hidden = 48 });
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
        Assert.Equal("model.decoder.head_size", e.Field);
        Assert.Contains("found 24", e.Message);
    }

    [Fact]
    public void BrokenJsonAndBrokenOnnxAreReported()
    {
        var json = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("json"));
        File.WriteAllText(Path.Combine(json, "genai_config.json"), "{ \"model\": { \"type\": 3 ");
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(json));
        Assert.Contains("valid GenAI config JSON", e.Message);

        var onnx = TestPaths.CopyModel(TestPaths.Tiny, _temp.Sub("onnx"));
        File.WriteAllBytes(Path.Combine(onnx, "model.onnx"), [1, 2, 3, 4, 5]);
        var o = Assert.Throws<ModelFolderException>(() => KvModel.Load(onnx));
        Assert.EndsWith("model.onnx", o.File);
        Assert.Contains("an ONNX model ONNX Runtime can load", o.Message);
    }

    private static void Apply(JsonObject config, string edit)
    {
        var model = config["model"]!.AsObject();
        var decoder = model["decoder"]!.AsObject();
        if (edit == "remove decoder") { model.Remove("decoder"); return; }
        if (edit == "remove type") { model.Remove("type"); return; }
        var (key, value) = (edit.Split('=')[0], edit.Split('=')[1]);
        if (key.StartsWith("past_", StringComparison.Ordinal)) decoder["inputs"]![key] = value;
        else if (key.StartsWith("present_", StringComparison.Ordinal)) decoder["outputs"]![key] = value;
        else decoder[key] = int.Parse(value);
    }

    public void Dispose() => _temp.Dispose();
}

public sealed class ExecutionDeviceTests
{
    [Fact]
    public void AskingForCudaWithoutAGpuRunsOnTheCpuAndSaysWhy()
    {
        var cuda = OrtKvTier.Model.CudaExecutionProvider.Devices(null, out var reason);
        if (cuda.Count > 0) return; // a GPU machine: nothing to fall back from (GpuChecks covers it)
        using var model = KvModel.Load(TestPaths.Tiny, new KvModelOptions { Device = ExecutionDevice.Cuda });
        Assert.Equal(ExecutionDevice.Cpu, model.Device);
        Assert.NotNull(model.DeviceNote);
        Assert.Contains("CUDA", model.DeviceNote);
        Assert.Equal(reason, model.DeviceNote["running on the CPU: ".Length..]);
        using var cpu = KvModel.Load(TestPaths.Tiny);
        Assert.Equal(OurTokens.Greedy(model, [5, 6, 7], 4), OurTokens.Greedy(cpu, [5, 6, 7], 4));

        var e = Assert.Throws<InvalidOperationException>(() => KvModel.Load(TestPaths.Tiny, new KvModelOptions { Device = ExecutionDevice.Cuda, FallBackToCpu = false }));
        Assert.Contains("cannot run on CUDA", e.Message);
        var missing = Assert.Throws<InvalidOperationException>(() => KvModel.Load(TestPaths.Tiny,
            new KvModelOptions { Device = ExecutionDevice.Cuda, FallBackToCpu = false, CudaProviderPath = "/nonexistent/libonnxruntime_providers_cuda.so" }));
        Assert.Contains("CUDA", missing.Message);
    }
}
