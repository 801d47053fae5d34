using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Quality;
using OrtKvTier.Tensors;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Quality;

/// <summary>
/// The disk's approximate encodings behind their quality gate: used where the model keeps its predictions, refused with
/// the figures where it does not, measured once per model and never on the word of a file somebody else wrote.
/// </summary>
public sealed class QualityGateTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();

    private static PrefixCache Open(KvModel model, string directory, KvEncoding encoding, long hostBytes = 64L << 20) => PrefixCache.Open(model, new PrefixCacheOptions
    {
        Directory = directory, ChunkTokens = Chunk, HostBudgetBytes = hostBytes, DiskCapacityBytes = 32L << 20, AlwaysRestore = true, DiskEncoding = encoding,
    });

    [Fact]
    public void Int8PassesOnTheTestModelAndADiskHitRestoresFromTheInt8Pool()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(5 * Chunk + 3, seed: 21);
        using (var cache = Open(model, dir, KvEncoding.Int8))
        {
            Assert.Equal(KvEncoding.Int8, cache.DiskEncoding);
            Assert.Empty(cache.Warnings);
            Assert.True(cache.DiskEncodingQuality!.Top1Agreement >= new KvQualityGate().MinTop1Agreement);
            CacheTestKit.Greedy(model, prompt, cache);
        }
        // A new cache (empty host memory): the prefix comes from the int8 pool, and the report says so.
        using var again = Open(model, dir, KvEncoding.Int8);
        var run = CacheTestKit.Greedy(model, prompt, again);
        Assert.Equal(5 * Chunk, run.Restore.RestoredTokens);
        Assert.Equal("int8", run.Restore.EncodingByTier["disk"]);
        Assert.Equal(KvEncoding.Int8, again.Disk!.Pool.Identity.Encoding);
        // Restored approximately: close to the exact logits, not equal to them.
        var exact = CacheTestKit.Greedy(model, prompt, cache: null);
        Assert.False(run.LogitsBitwiseEqual(exact));
        Assert.True(exact.Logits.Zip(run.Logits).Max(p => Math.Abs(p.First - p.Second)) < 0.05f);
    }

    [Fact]
    public void Int4IsRefusedOnARandomWeightModelWithOneWarningNamingTheFiguresAndTheDiskStaysExact()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(3 * Chunk + 2, seed: 22);
        using (var cache = Open(model, dir, KvEncoding.Int4))
        {
            Assert.Equal(KvEncoding.Exact, cache.DiskEncoding);
            var warning = Assert.Single(cache.Warnings);
            Assert.Contains("not int4", warning);
            Assert.Contains("measured on", warning);
            Assert.Contains("top-1 agreement", warning);
            Assert.True(cache.DiskEncodingQuality!.Top1Agreement < 0.99);
            var first = CacheTestKit.Greedy(model, prompt, cache);
            Assert.True(first.Tokens.Length > 0);
        }
        // Measured once: the next process reads the stored verdict instead.
        using var reopened = Open(model, dir, KvEncoding.Int4, hostBytes: 0);
        Assert.Contains("stored on", Assert.Single(reopened.Warnings));
        var run = CacheTestKit.Greedy(model, prompt, reopened);
        Assert.Equal("exact", run.Restore.EncodingByTier["disk"]);
        Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null).Tokens, run.Tokens);
    }

    [Fact]
    public void AVerdictFileSomebodyEditedIsIgnoredAndMeasuredAgain()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var dir = _temp.Sub("cache");
        using (var cache = Open(model, dir, KvEncoding.Int4)) Assert.Equal(KvEncoding.Exact, cache.DiskEncoding);
        using (var cache = Open(model, dir, KvEncoding.Int4)) Assert.Contains("stored on", cache.Warnings.Single());
        var path = Directory.GetFiles(dir, "*-int4-k*.quality").Single();
        var lines = File.ReadAllLines(path);
        File.WriteAllLines(path, [System.Text.RegularExpressions.Regex.Replace(lines[0], "\"top1_agreement\":[0-9.eE+-]+", "\"top1_agreement\":1"), lines[1]]);
        using var forged = Open(model, dir, KvEncoding.Int4);
        Assert.Equal(KvEncoding.Exact, forged.DiskEncoding);
        Assert.Contains("measured on", forged.Warnings.Single());
    }

    [Fact]
    public void WithoutTheModelAnApproximateEncodingIsUsedOnlyOnAStoredVerdict()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache"), ChunkTokens = Chunk, DiskEncoding = KvEncoding.Int8 };
        using (var blind = new PrefixCache(model.Fingerprint, model.Layout, options))
        {
            Assert.Equal(KvEncoding.Exact, blind.DiskEncoding);
            Assert.Contains("without the model", blind.Warnings.Single());
        }
        using (var measured = PrefixCache.Open(model, options)) Assert.Equal(KvEncoding.Int8, measured.DiskEncoding);
        using var later = new PrefixCache(model.Fingerprint, model.Layout, options);
        Assert.Equal(KvEncoding.Int8, later.DiskEncoding);
        Assert.Empty(later.Warnings);
    }

    [Fact]
    public void ExactIsTheDefaultAndMeasuresNothing()
    {
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var dir = _temp.Sub("cache");
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = dir, ChunkTokens = Chunk });
        Assert.Equal(KvEncoding.Exact, cache.DiskEncoding);
        Assert.Null(cache.DiskEncodingQuality);
        Assert.Empty(Directory.GetFiles(dir, "*.quality"));
        Assert.Throws<ArgumentOutOfRangeException>(() => PrefixCache.Open(model, new PrefixCacheOptions { Directory = dir, QualityGate = new KvQualityGate { MinTop1Agreement = 1.5 } }));
    }

    /// <summary>On the trained model (its folder beside the repository): int8 restores give the exact run's greedy tokens.</summary>
    [TrainedModelFact]
    public void OnTheTrainedModelInt8KeepsTheGreedyTokensOfTheExactPrefix()
    {
        using var model = KvModel.Load(TestPaths.TrainedModel);
        using var tokenizer = new ModelTokenizer(TestPaths.TrainedModel);
        var prompt = tokenizer.Encode("The quality of a cache that stores numbers in eight bits is measured on text the model never saw during training, which is what this test does.");
        var dir = _temp.Sub("cache");
        using (var cache = Open(model, dir, KvEncoding.Int8))
        {
            Assert.Equal(KvEncoding.Int8, cache.DiskEncoding);
            CacheTestKit.Greedy(model, prompt, cache, newTokens: 24);
        }
        using var again = Open(model, dir, KvEncoding.Int8);
        var run = CacheTestKit.Greedy(model, prompt, again, newTokens: 24);
        Assert.Equal("int8", run.Restore.EncodingByTier["disk"]);
        Assert.True(run.Restore.RestoredTokens >= prompt.Length - Chunk - 2);
        Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null, newTokens: 24).Tokens, run.Tokens);
    }

    public void Dispose() => _temp.Dispose();
}
