using OrtKvTier.Cache;
using OrtKvTier.Tiers.Remote;
using OrtKvTier.Storage;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Console.Commands;

/// <summary>
/// The cache options shared by generate, chat and warm: <c>--cache-dir</c>, <c>--no-cache</c>, <c>--chunk-tokens</c>, <c>--cache-size</c>,
/// <c>--host-cache-size</c>, <c>--device-cache-size</c>, <c>--salt</c>, <c>--tenant</c>, <c>--encrypt</c>, the remote tier's. The key comes
/// from <c>ORTKV_CACHE_KEY</c> or the cache directory's <c>cache.key</c>.
/// </summary>
internal sealed record CacheOptions(bool Enabled, PrefixCacheOptions Options, RemoteTierOptions? Remote, string? Tenant)
{
    public static readonly string[] Flags = ["no-cache", "encrypt", "share-with-group", "always-restore"];

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
            DeviceBudgetBytes = cl.Bytes("device-cache-size", defaults.DeviceBudgetBytes, allowZero: true),
            Salt = cl.String("salt"),
            EncryptAtRest = cl.Flag("encrypt"),
            ShareWithGroup = cl.Flag("share-with-group"),
            AlwaysRestore = cl.Flag("always-restore"),
            DiskEncoding = cl.String("disk-encoding") is { } encoding ? Enum.Parse<KvEncoding>(encoding, ignoreCase: true) : KvEncoding.Exact,
            Logger = StderrLogger.Instance,
        };
        var tenant = cl.String("tenant");
        var remote = cl.String("remote");
        var admission = cl.String("remote-admission");
        var ns = cl.String("remote-namespace");
        var ttl = cl.String("remote-ttl");
        var timeout = cl.String("remote-timeout");
        var remoteEncoding = cl.String("remote-encoding");
        if (remote is null && (admission ?? ns ?? ttl ?? timeout ?? remoteEncoding) is not null)
            throw new UsageException("--remote-admission, --remote-namespace, --remote-ttl, --remote-timeout and --remote-encoding need --remote redis://HOST:PORT.");
        RemoteTierOptions? remoteOptions = null;
        if (remote is not null)
        {
            if (disabled) throw new UsageException("--remote needs the cache; drop --no-cache.");
            remoteOptions = new RemoteTierOptions
            {
                Connection = remote,
                Admission = (admission ?? "seen-twice") switch
                {
                    "always" => RemoteAdmission.Always,
                    "seen-twice" => RemoteAdmission.SeenTwice,
                    var a => throw new UsageException($"--remote-admission expects always or seen-twice; got '{a}'."),
                },
                Namespace = ns ?? "ortkv",
                TimeToLive = ttl is null ? new RemoteTierOptions { Connection = remote }.TimeToLive : Duration("remote-ttl", ttl),
                OperationTimeout = timeout is null ? new RemoteTierOptions { Connection = remote }.OperationTimeout : Duration("remote-timeout", timeout),
                Encoding = remoteEncoding is null ? KvEncoding.Exact : Enum.Parse<KvEncoding>(remoteEncoding, ignoreCase: true),
            };
            try
            {
                remoteOptions.Validate();
            }
            catch (ArgumentException e)
            {
                throw new UsageException($"--remote: {e.Message}");
            }
        }
        return new CacheOptions(!disabled, options, remoteOptions, tenant);
    }

    /// <summary>A duration such as <c>250ms</c>, <c>90s</c>, <c>30m</c>, <c>12h</c> or <c>2d</c>.</summary>
    internal static TimeSpan Duration(string name, string text)
    {
        var units = new (string Suffix, double Seconds)[] { ("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400) };
        foreach (var (suffix, seconds) in units)
            if (text.EndsWith(suffix, StringComparison.OrdinalIgnoreCase)
                && double.TryParse(text[..^suffix.Length], System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var value) && value > 0)
                return TimeSpan.FromSeconds(value * seconds);
        throw new UsageException($"--{name} expects a duration such as 250ms, 90s, 30m, 12h or 2d; got '{text}'.");
    }

    /// <summary>The cache for <paramref name="model"/>, or null with --no-cache.</summary>
    public PrefixCache? Open(KvModel model)
    {
        if (!Enabled) return null;
        if (Remote is null) return PrefixCache.Open(model, Options);
        var remote = RemoteTier.For(model, Options.ChunkTokens, Remote, StderrLogger.Instance);
        try
        {
            return PrefixCache.Open(model, Options with { ExtraTiers = [remote] });
        }
        catch
        {
            remote.Dispose();
            throw;
        }
    }
}
