using OrtKvTier.Cache;
using OrtKvTier.Cache.Tiers.Remote;
using OrtKvTier.Storage;
using OrtKvTier.Model;

namespace OrtKvTier.Console.Commands;

/// <summary>The cache options shared by generate and the benches: <c>--cache-dir</c>, <c>--no-cache</c>, <c>--chunk-tokens</c>, <c>--cache-size</c>, <c>--host-cache-size</c>.</summary>
internal sealed record CacheOptions(bool Enabled, PrefixCacheOptions Options, RemoteTierOptions? Remote)
{
    public const string Usage = "[--cache-dir DIR | --no-cache] [--chunk-tokens N] [--cache-size SIZE] [--host-cache-size SIZE]\n" +
        "         [--remote redis://HOST:PORT [--remote-admission always|seen-twice] [--remote-namespace NS]]";

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
        var remote = cl.String("remote");
        var admission = cl.String("remote-admission");
        var ns = cl.String("remote-namespace");
        if (remote is null && (admission ?? ns) is not null) throw new UsageException("--remote-admission and --remote-namespace need --remote redis://HOST:PORT.");
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
        return new CacheOptions(!disabled, options, remoteOptions);
    }

    /// <summary>The cache for <paramref name="model"/>, or null with --no-cache.</summary>
    public PrefixCache? Open(KvModel model)
    {
        if (!Enabled) return null;
        if (Remote is null) return PrefixCache.Open(model, Options);
        var remote = new RemoteTier(Remote, SlotPoolIdentity.For(model, Options.ChunkTokens));
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
