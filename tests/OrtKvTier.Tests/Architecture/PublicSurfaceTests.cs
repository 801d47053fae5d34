using OrtKvTier.Cache;
using Xunit.Abstractions;
using OrtKvTier.Diagnostics;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tiers;

namespace OrtKvTier.Tests.Architecture;

/// <summary>The public surface is what the README's user needs: plumbing, DTOs and test entry points stay internal.</summary>
public sealed class PublicSurfaceTests(ITestOutputHelper output)
{
    // 40, the compressed tiers' three (the encoding option, the quality gate's thresholds and the figures it reports) and
    // document reuse's report of where a document went; continuous batching's batch and its options.
    private const int MaxPublicTypes = 46;

    [Fact]
    public void TheLibraryExportsAtMostFortySixTypes()
    {
        var exported = typeof(PrefixCache).Assembly.GetExportedTypes().Select(t => t.FullName!).Order(StringComparer.Ordinal).ToList();
        foreach (var name in exported) output.WriteLine(name);
        Assert.True(exported.Count <= MaxPublicTypes, $"{exported.Count} public types (at most {MaxPublicTypes}):\n{string.Join("\n", exported)}");
    }

    [Theory]
    [InlineData("OrtKvTier.Model.GenAiConfig")]
    [InlineData("OrtKvTier.Tiers.DiskTier")]
    [InlineData("OrtKvTier.Storage.SlotPoolLockedException")]
    [InlineData("OrtKvTier.Cache.DeviceKvTransfer")]
    [InlineData("OrtKvTier.Tiers.DeviceTier")]
    [InlineData("OrtKvTier.Diagnostics.KvCacheMetrics")]
    public void PlumbingIsInternal(string typeName)
    {
        var type = typeof(PrefixCache).Assembly.GetType(typeName);
        Assert.NotNull(type);
        Assert.False(type.IsVisible, $"{typeName} is public");
    }
}
