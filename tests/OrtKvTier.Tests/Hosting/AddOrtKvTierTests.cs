using System.Diagnostics;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using OrtKvTier.Cache;
using OrtKvTier.Hosting;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Hosting;

/// <summary><c>services.AddOrtKvTier(configuration)</c> as an ASP.NET Core or generic-host app uses it.</summary>
public sealed class AddOrtKvTierTests : IDisposable
{
    private readonly TempDir _temp = new();

    private ServiceProvider Services(Dictionary<string, string?> settings, Action<ChatClientBuilder>? pipeline = null)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection().AddLogging();
        var builder = services.AddOrtKvTier(configuration.GetSection(OrtKvTierOptions.SectionName));
        pipeline?.Invoke(builder);
        return services.BuildServiceProvider();
    }

    private Dictionary<string, string?> Settings(params (string Key, string Value)[] more)
    {
        var settings = new Dictionary<string, string?>
        {
            ["OrtKvTier:ModelFolder"] = TestPaths.Tiny,
            ["OrtKvTier:CacheDirectory"] = _temp.Sub("cache"),
            ["OrtKvTier:ChunkTokens"] = "16",
            ["OrtKvTier:DiskCacheBytes"] = (16 << 20).ToString(),
        };
        foreach (var (key, value) in more) settings[$"OrtKvTier:{key}"] = value;
        return settings;
    }

    [Fact]
    public async Task TheChatClientFromConfigurationHitsTheCacheThroughALoggingPipelineAndEmitsSpans()
    {
        var spans = new List<string>();
        using var listener = new ActivityListener
        {
            ShouldListenTo = source => source.Name == PrefixCache.ActivitySourceName,
            Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
            ActivityStopped = activity => { lock (spans) spans.Add(activity.OperationName); },
        };
        ActivitySource.AddActivityListener(listener);
        using var services = Services(Settings(("DefaultMaxOutputTokens", "4")), builder => builder.UseLogging());
        var client = services.GetRequiredService<IChatClient>();
        Assert.NotNull(client.GetService<LoggingChatClient>());
        var system = new ChatMessage(ChatRole.System, string.Join(' ', Enumerable.Repeat("Answer in one short sentence about the manual.", 4)));
        var first = await client.GetResponseAsync([system, new(ChatRole.User, "How do I reset it?")], new ChatOptions { Temperature = 0 });
        var second = await client.GetResponseAsync([system, new(ChatRole.User, "Where is the serial number?")], new ChatOptions { Temperature = 0 });
        Assert.Equal(0, first.Usage!.CachedInputTokenCount);
        Assert.True(second.Usage!.CachedInputTokenCount >= 32, $"cached {second.Usage.CachedInputTokenCount}");
        Assert.True(first.Usage.OutputTokenCount <= 4);
        Assert.Same(services.GetRequiredService<KvModel>(), services.GetRequiredService<KvModel>());
        Assert.Equal(Path.Combine(_temp.Sub("cache")), Path.GetDirectoryName(services.GetRequiredService<PrefixCache>().DiskDirectory));
        lock (spans)
            foreach (var name in new[] { "ortkv.restore", "ortkv.lookup", "ortkv.prefill", "ortkv.capture" })
                Assert.Contains(name, spans);
    }

    [Fact]
    public async Task WithTheCacheOffTheClientAnswersWithoutIt()
    {
        using var services = Services(Settings(("CacheEnabled", "false"), ("DefaultMaxOutputTokens", "3")));
        var client = services.GetRequiredService<IChatClient>();
        var messages = new List<ChatMessage> { new(ChatRole.User, string.Join(' ', Enumerable.Repeat("hello there", 20))) };
        await client.GetResponseAsync(messages);
        Assert.Equal(0, (await client.GetResponseAsync(messages)).Usage!.CachedInputTokenCount ?? 0);
        Assert.Throws<InvalidOperationException>(() => services.GetRequiredService<PrefixCache>());
    }

    [Fact]
    public void AMissingModelFolderIsRefusedNamingTheSetting()
    {
        using var services = Services(new Dictionary<string, string?> { ["OrtKvTier:ChunkTokens"] = "16" });
        var e = Assert.ThrowsAny<Exception>(() => services.GetRequiredService<IChatClient>());
        Assert.Contains("ModelFolder", e.ToString());
    }

    public void Dispose() => _temp.Dispose();
}
