using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using OrtKvTier.Cache;
using OrtKvTier.Chat;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Tiers;
using OrtKvTier.Tiers.Remote;

namespace OrtKvTier.Hosting;

/// <summary>Registers OrtKvTier with <see cref="IServiceCollection"/>.</summary>
public static class OrtKvTierServiceCollectionExtensions
{
    /// <summary>
    /// Registers the model (<see cref="KvModel"/>), its <see cref="ModelTokenizer"/>, the <see cref="PrefixCache"/> (unless
    /// <see cref="OrtKvTierOptions.CacheEnabled"/> is false) and an <see cref="IChatClient"/> over them, all singletons
    /// created on first use, with options bound from <paramref name="configuration"/> (a section such as
    /// <c>configuration.GetSection("OrtKvTier")</c>). Returns the chat client's builder: add <c>UseLogging()</c>,
    /// <c>UseOpenTelemetry()</c> and the like. The cache's meter and activity source are both named
    /// <see cref="PrefixCache.MeterName"/>.
    /// </summary>
    public static ChatClientBuilder AddOrtKvTier(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(configuration);
        return services.AddOrtKvTier(options => configuration.Bind(options));
    }

    /// <summary>Like <see cref="AddOrtKvTier(IServiceCollection, IConfiguration)"/>, with options set by <paramref name="configure"/>.</summary>
    public static ChatClientBuilder AddOrtKvTier(this IServiceCollection services, Action<OrtKvTierOptions> configure)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        services.AddOptions<OrtKvTierOptions>().Configure(configure).Validate(Valid);
        services.TryAddSingleton(sp =>
        {
            var options = Options(sp);
            return KvModel.Load(options.ModelFolder, new KvModelOptions { Device = options.Device });
        });
        services.TryAddSingleton(sp => new ModelTokenizer(sp.GetRequiredService<KvModel>().Folder));
        services.TryAddSingleton(sp => OpenCache(sp, Options(sp)) ?? throw new InvalidOperationException(
            $"{OrtKvTierOptions.SectionName}:{nameof(OrtKvTierOptions.CacheEnabled)} is false: no prefix cache is registered."));
        services.TryAddSingleton(sp => Options(sp) is { Batching: true } options ? new GenerationBatch(sp.GetRequiredService<KvModel>(), options.BatchOptions)
            : throw new InvalidOperationException($"{OrtKvTierOptions.SectionName}:{nameof(OrtKvTierOptions.BatchRows)} is 1 (or the model runs on a device): no batch is registered."));
        return services.AddChatClient(sp =>
        {
            var options = Options(sp);
            var cache = options.CacheEnabled ? sp.GetRequiredService<PrefixCache>() : null;
            var batch = options.Batching ? sp.GetRequiredService<GenerationBatch>() : null;
            return new KvChatClient(sp.GetRequiredService<KvModel>(), sp.GetRequiredService<ModelTokenizer>(), cache,
                new KvChatClientOptions { DefaultMaxOutputTokens = options.DefaultMaxOutputTokens, ModelId = options.ModelId, Batch = batch });
        });
    }

    private static OrtKvTierOptions Options(IServiceProvider services) => services.GetRequiredService<IOptions<OrtKvTierOptions>>().Value;

    private static bool Valid(OrtKvTierOptions options)
    {
        options.Validate(); // throws naming the setting; Options wraps it in an OptionsValidationException
        return true;
    }

    private static PrefixCache? OpenCache(IServiceProvider services, OrtKvTierOptions options)
    {
        if (!options.CacheEnabled) return null;
        var model = services.GetRequiredService<KvModel>();
        var logger = services.GetService<ILoggerFactory>()?.CreateLogger("OrtKvTier");
        var key = options.SecretKey is { Length: > 0 } text ? CacheSecret.ParseKeyBytes(text, $"{OrtKvTierOptions.SectionName}:{nameof(OrtKvTierOptions.SecretKey)}") : null;
        var cacheOptions = new PrefixCacheOptions
        {
            Directory = options.MemoryOnly || options.CacheDirectory == "" ? null : options.CacheDirectory ?? PrefixCacheOptions.DefaultDirectory,
            ChunkTokens = options.ChunkTokens,
            HostBudgetBytes = options.HostCacheBytes,
            DiskCapacityBytes = options.DiskCacheBytes,
            DeviceBudgetBytes = options.DeviceCacheBytes,
            SecretKey = key,
            EncryptAtRest = options.EncryptAtRest,
            ShareWithGroup = options.ShareWithGroup,
            Salt = options.Salt,
            AlwaysRestore = options.AlwaysRestore,
            DiskEncoding = options.DiskEncoding,
            Logger = logger,
        };
        if (options.Remote is not { Length: > 0 } connection) return PrefixCache.Open(model, cacheOptions);
        IKvChunkTier remote = RemoteTier.For(model, options.ChunkTokens, new RemoteTierOptions { Connection = connection, Namespace = options.RemoteNamespace, SecretKey = key, Encoding = options.RemoteEncoding }, logger);
        try
        {
            return PrefixCache.Open(model, cacheOptions with { ExtraTiers = [remote] });
        }
        catch
        {
            remote.Dispose();
            throw;
        }
    }
}
