using OrtKvTier.Cache;
using OrtKvTier.Model;

namespace OrtKvTier.Console.Commands;

/// <summary>The cache options shared by generate and the benches: <c>--cache-dir</c>, <c>--no-cache</c>, <c>--chunk-tokens</c>, <c>--cache-size</c>, <c>--host-cache-size</c>.</summary>
internal sealed record CacheOptions(bool Enabled, PrefixCacheOptions Options)
{
    public const string Usage = "[--cache-dir DIR | --no-cache] [--chunk-tokens N] [--cache-size SIZE] [--host-cache-size SIZE]";

    public static readonly string[] Flags = ["no-cache"];

    public static CacheOptions Read(CommandLine cl)
    {
        bool disabled = cl.Flag("no-cache");
        var dir = cl.String("cache-dir");
        if (disabled && dir is not null) throw new UsageException("Give --cache-dir or --no-cache, not both.");
        var defaults = new PrefixCacheOptions();
        var options = defaults with
        {
            Directory = dir ?? PrefixCacheOptions.DefaultDirectory,
            ChunkTokens = cl.Int("chunk-tokens", defaults.ChunkTokens, min: 1),
            DiskCapacityBytes = cl.Bytes("cache-size", defaults.DiskCapacityBytes),
            HostBudgetBytes = cl.Bytes("host-cache-size", defaults.HostBudgetBytes),
        };
        return new CacheOptions(!disabled, options);
    }

    /// <summary>The cache for <paramref name="model"/>, or null with --no-cache.</summary>
    public PrefixCache? Open(KvModel model) => Enabled ? PrefixCache.Open(model, Options) : null;
}
