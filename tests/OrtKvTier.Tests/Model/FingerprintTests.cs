using System.Text.Json;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Support;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Model;

/// <summary>The fingerprint is what the model is: the decoder and every external-data file its graph references, whatever their names.</summary>
public sealed class FingerprintTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Theory]
    [InlineData("model.onnx_data")]
    [InlineData("model.onnx.data")]
    [InlineData("weights")]
    public void FoldersThatDifferInOneWeightByteOfTheirExternalDataNeverShareEntries(string dataFile)
    {
        var shape = ModelShape.Tiny with { ExternalDataFile = dataFile, MaxLength = 256 };
        var first = TestPaths.Build(_temp.Sub("first"), shape);
        var second = TestPaths.CopyModel(first, _temp.Sub("second"));
        var data = Path.Combine(second, dataFile);
        var bytes = File.ReadAllBytes(data);
        bytes[bytes.Length / 2] ^= 0x01; // one bit of one weight
        File.WriteAllBytes(data, bytes);

        using (var a = KvModel.Load(first))
        using (var b = KvModel.Load(second))
            Assert.NotEqual(a.Fingerprint, b.Fingerprint);

        var cacheDir = _temp.Sub("cache");
        var prompt = string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6));
        JsonElement Run(string folder, params string[] more) =>
            Json(ChildProcess.Console(["generate", "--model", folder, "--prompt", prompt, "--max-new-tokens", "8", "--json", "--chunk-tokens", "16", "--cache-size", "8MiB", .. more]));
        var reference = Run(second, "--no-cache");
        Assert.Equal(0, Run(first, "--cache-dir", cacheDir).GetProperty("cached_tokens").GetInt32());
        var afterFirst = Run(second, "--cache-dir", cacheDir);
        Assert.Equal(0, afterFirst.GetProperty("cached_tokens").GetInt32()); // the first model's entries are not the second's
        Assert.Equal(reference.GetProperty("tokens").ToString(), afterFirst.GetProperty("tokens").ToString());
        Assert.True(Run(second, "--cache-dir", cacheDir).GetProperty("cached_tokens").GetInt32() > 0); // its own entries are
    }

    [Fact]
    public void AMissingExternalDataFileFailsTheLoadNamingIt()
    {
        var folder = TestPaths.Build(_temp.Sub("m"), ModelShape.Tiny with { ExternalDataFile = "model.onnx_data" });
        File.Delete(Path.Combine(folder, "model.onnx_data"));
        var e = Assert.Throws<ModelFolderException>(() => KvModel.Load(folder));
        Assert.Contains("model.onnx_data", e.Message);
        Assert.Contains("no such file", e.Message);
    }

    [Fact]
    public void TheFingerprintCoversDecoderConfigAndShapeAndIsStable()
    {
        var a = TestPaths.Build(_temp.Sub("a"), ModelShape.Tiny);
        var b = TestPaths.Build(_temp.Sub("b"), ModelShape.Tiny);
        var edited = TestPaths.CopyModel(a, _temp.Sub("c"), c => c["search"]!["max_length"] = 200);
        using var ma = KvModel.Load(a);
        using var mb = KvModel.Load(b);
        using var mc = KvModel.Load(edited);
        Assert.Equal(ma.Fingerprint, mb.Fingerprint); // same bytes, same fingerprint, wherever the folder is
        Assert.NotEqual(ma.Fingerprint, mc.Fingerprint);
    }


    public void Dispose() => _temp.Dispose();
}
