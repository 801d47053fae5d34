using Microsoft.Extensions.Logging;
using OrtKvTier.Tiers;
using OrtKvTier.Storage;
using OrtKvTier.Quality;
using OrtKvTier.Tensors;

namespace OrtKvTier.Cache;

/// <summary>When chunks stored in host memory reach the lower tiers (disk, remote).</summary>
public enum LowerTierWrites
{
    /// <summary>Every stored chunk is also written below, on a background thread (survives restarts and is shared with other processes at once).</summary>
    WriteThrough,
    /// <summary>Chunks are written below only when evicted from host memory, on <see cref="PrefixCache.Flush"/> and on dispose.</summary>
    WriteBack,
}

/// <summary>How to open a <see cref="PrefixCache"/>.</summary>
public sealed record PrefixCacheOptions
{
    /// <summary>
    /// Tokens per chunk. 32 by default, from <c>ortkv bench chunks</c> on the bench model (README): a
    /// 2048-token prefix restores from disk in 5–11 ms at every length from 16 to 512, while a prompt
    /// that diverges inside a chunk recomputes half a chunk on average (about 45 ms at 32 tokens, 90 at
    /// 64, 370 at 256). 16 saves another ~20 ms per partial match but doubles the entries, slots and
    /// journal records per prompt and halves each device transfer.
    /// </summary>
    public int ChunkTokens { get; init; } = DefaultChunkTokens;

    /// <summary>The default <see cref="ChunkTokens"/>.</summary>
    public const int DefaultChunkTokens = 32;

    /// <summary>Root directory of the disk tier (one pool per model and chunk length below it); null keeps the cache in memory only.</summary>
    public string? Directory { get; init; }

    /// <summary>Most bytes of chunks held in host memory. Default 1 GiB.</summary>
    public long HostBudgetBytes { get; init; } = 1L << 30;

    /// <summary>Capacity of the disk pool in bytes (its file grows on demand up to it); an existing pool of another capacity is resized to it (shrinking keeps the most recently used entries). Default 1 GiB.</summary>
    public long DiskCapacityBytes { get; init; } = 1L << 30;

    /// <summary>
    /// Device memory for the device tier when the model runs on CUDA: recent prefixes stay there and are
    /// restored device to device; evicted ones go to host memory. 0 (the default) turns it off: device
    /// memory is shared with the model's weights and activations, so size it for your GPU.
    /// </summary>
    public long DeviceBudgetBytes { get; init; }

    /// <summary>Mixed into every key, so caches with different salts never share entries. Default none. For tenants of one cache, give each request its tenant instead (<c>KvGenerator</c>, <c>TextGenerator</c>, <c>KvChatClient</c>).</summary>
    public string? Salt { get; init; }

    /// <summary>
    /// The secret key that authenticates entries and makes chunk keys (at least 16 bytes; 32 random bytes
    /// recommended). Null: the <c>ORTKV_CACHE_KEY</c> environment variable (hex or base64), else the <c>cache.key</c>
    /// file in <see cref="Directory"/>, created at first use (32 random bytes, mode 0600); a memory-only cache with
    /// neither uses a key of its own. Processes share entries (disk and remote) only when they share the key; an
    /// entry under another key is a miss, never an error.
    /// </summary>
    public byte[]? SecretKey { get; init; }

    /// <summary>Encrypt the payload and token ids of chunks written to disk (AES-CTR under per-entry keys; entries are authenticated either way), so a reader of the pool files learns nothing about prompts. Default false.</summary>
    public bool EncryptAtRest { get; init; }

    /// <summary>
    /// Share <see cref="Directory"/> with its group on purpose: directories created 0770 and files 0660 (not 0700/0600),
    /// a directory or key file of another member trusted and written. Every member can read and forge entries, so use it
    /// only within one trust domain (for example the workers of one service under one group). Default false: a cache
    /// directory owned by another user is served read-only.
    /// </summary>
    public bool ShareWithGroup { get; init; }

    /// <summary>
    /// How the disk tier stores KV. Default <see cref="KvEncoding.Exact"/> (restored prefixes are bit for bit the
    /// computed ones). <see cref="KvEncoding.Int8"/> halves an fp16 model's bytes (a pool holds twice the prefixes) at a
    /// small, measured cost in accuracy; it is used only when the model passes <see cref="QualityGate"/>, else the disk
    /// stays exact and <see cref="PrefixCache.Warnings"/> says why. Each encoding has a pool of its own.
    /// </summary>
    public KvEncoding DiskEncoding { get; init; } = KvEncoding.Exact;

    /// <summary>What an approximate <see cref="DiskEncoding"/> must keep of the model's predictions before it is used.</summary>
    public KvQualityGate QualityGate { get; init; } = new();

    /// <summary>When chunks reach the disk tier. Default <see cref="LowerTierWrites.WriteThrough"/>.</summary>
    public LowerTierWrites LowerTierWrites { get; init; } = LowerTierWrites.WriteThrough;

    /// <summary>When disk writes become durable. Default <see cref="Storage.Durability.Batched"/>.</summary>
    public Durability Durability { get; init; } = Durability.Batched;

    /// <summary>More tiers below the disk (for example a remote one), tried in order after it. The cache disposes them.</summary>
    public IReadOnlyList<IKvChunkTier> ExtraTiers { get; init; } = [];

    /// <summary>
    /// How long closing the cache (<see cref="PrefixCache.Dispose"/>) waits for chunks still queued for the lower tiers
    /// (disk, remote). Chunks still queued after it are not stored: they are counted (<c>ortkv.cache.tier_faults</c>,
    /// cause <c>not-stored</c>), logged and listed in <see cref="PrefixCache.Warnings"/>. Default 30 s.
    /// </summary>
    public TimeSpan CloseTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Restores whatever prefix the tiers hold, even when computing it is expected to be faster (by the costs the cache
    /// measures: small prefixes of tiny models). For tests and benchmarks of the restore path itself; default false, so a
    /// hit is never slower than a miss (<see cref="PrefixRestoreReport.ComputedInstead"/> says when it computed instead).
    /// </summary>
    public bool AlwaysRestore { get; init; }

    /// <summary>
    /// Runs the restore path in the background when the first cache of a model opens in a process (on a scratch pool in
    /// memory), so the first real restore does not pay for compiling it. Default true.
    /// </summary>
    public bool WarmUp { get; init; } = true;

    /// <summary>Where the disk tier's pool files live, given its directory; null: that directory on disk (tests run the cache on injected faults).</summary>
    internal Func<string, Storage.IStorageMedium>? DiskMedium { get; init; }

    /// <summary>Receives events for misses caused by damage or mismatch, recreated pools and failed writes.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>
    /// The per-user default for <see cref="Directory"/>: <c>$ORTKV_CACHE_DIR</c>, else
    /// <c>$XDG_CACHE_HOME/ortkvtier</c>, else <c>~/.cache/ortkvtier</c> (the local application data folder on Windows).
    /// </summary>
    public static string DefaultDirectory
    {
        get
        {
            var explicitDir = Environment.GetEnvironmentVariable("ORTKV_CACHE_DIR");
            if (!string.IsNullOrWhiteSpace(explicitDir)) return explicitDir;
            if (OperatingSystem.IsWindows())
                return Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "OrtKvTier", "cache");
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var root = string.IsNullOrWhiteSpace(xdg) ? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache") : xdg;
            return Path.Combine(root, "ortkvtier");
        }
    }

    /// <summary>
    /// Where a user's cache lives when <paramref name="directory"/> is given: the directory itself, or, when it is an
    /// existing directory of another user's that others may write (a shared <c>/tmp</c>-like directory, mode o+w), its
    /// subdirectory <c>user-UID</c> of this user's own, so that nobody else can plant a key file or a pool where this
    /// user's cache reads them. Not with <paramref name="shareWithGroup"/> (a group shares one directory on purpose).
    /// </summary>
    public static string DirectoryFor(string directory, bool shareWithGroup = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (shareWithGroup || OperatingSystem.IsWindows() || !System.IO.Directory.Exists(directory)) return directory;
        bool othersWrite = (File.GetUnixFileMode(directory) & UnixFileMode.OtherWrite) != 0;
        return othersWrite && Security.PrivateFiles.Owner(directory) is { } owner && owner != Security.PrivateFiles.CurrentUser
            ? Path.Combine(directory, $"user-{Security.PrivateFiles.CurrentUser}")
            : directory;
    }

    /// <summary>The id of the key a pool under a cache directory was written with, from the pool directory's name; null for a directory the cache did not name.</summary>
    public static string? KeyIdOfPool(string poolDirectory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(poolDirectory);
        return Tiers.DiskTier.KeyIdOfPoolDirectory(poolDirectory);
    }

    /// <summary>Throws when a setting is out of range, naming it.</summary>
    public void Validate()
    {
        if (ChunkTokens < 1 || ChunkTokens > 65536)
            throw new ArgumentOutOfRangeException(nameof(ChunkTokens), ChunkTokens, "ChunkTokens must be between 1 and 65536.");
        ArgumentOutOfRangeException.ThrowIfNegative(HostBudgetBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(DeviceBudgetBytes);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(DiskCapacityBytes);
        if (CloseTimeout < TimeSpan.Zero && CloseTimeout != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(CloseTimeout), CloseTimeout, "CloseTimeout must be zero or more (or Timeout.InfiniteTimeSpan).");
        if (Directory is not null) ArgumentException.ThrowIfNullOrWhiteSpace(Directory);
        ArgumentNullException.ThrowIfNull(ExtraTiers);
        if (!Enum.IsDefined(DiskEncoding)) throw new ArgumentOutOfRangeException(nameof(DiskEncoding), DiskEncoding, "DiskEncoding must be exact, int8 or int4.");
        ArgumentNullException.ThrowIfNull(QualityGate);
        QualityGate.Validate();
        if (SecretKey is { Length: < Security.CacheSecret.MinKeyBytes })
            throw new ArgumentException($"SecretKey needs at least {Security.CacheSecret.MinKeyBytes} bytes (32 random bytes recommended, for example from `openssl rand -hex 32`); got {SecretKey.Length}.", nameof(SecretKey));
    }
}
