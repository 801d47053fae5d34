using Microsoft.Extensions.Logging;
using OrtKvTier.Diagnostics;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>Where and how the disk tier keeps a cache's chunks.</summary>
internal sealed record DiskTierSettings(string CacheDirectory, SlotPoolIdentity Identity, CacheSecret Secret, bool Encrypt, long CapacityBytes, Durability Durability,
    bool ShareWithGroup = false, Func<string, IStorageMedium>? Medium = null);

/// <summary>
/// The disk tier: a <see cref="SlotPool"/> in its own directory per model and chunk length. It never fails a
/// request: a pool it cannot write (another process holds the writer lock, no permission, a read-only
/// filesystem, no space) is served read-only, one it cannot open at all is left off, and a write that fails
/// turns writes off for the process; each cause is reported once through <see cref="TierFaults"/>.
/// </summary>
internal sealed class DiskTier : IInPlaceReadTier
{
    private readonly TierFaults _faults;
    private long _writeFailures;
    private volatile bool _writesOff;

    private DiskTier(SlotPool pool, TierFaults faults)
    {
        Pool = pool;
        _faults = faults;
        Pool.Dropped += (_, reason) =>
        {
            KvCacheMetrics.DamagedChunks.Add(1, KvCacheMetrics.Tier(Id.Name));
            faults.Keep(Id, "damage", $"entries of {Pool.Directory} failed verification and were dropped (first: {reason}); they are computed again (counted in ortkv.cache.damaged_chunks).");
        };
        Pool.NotStored += (_, reason) => faults.Report(Id, "not-stored", $"a chunk was not stored in {Pool.Directory}: {reason}; it stays in memory (counted in ortkv.cache.tier_faults).");
    }

    /// <summary>A disk tier over a pool opened by the caller (the cache's warm-up probe runs one on memory).</summary>
    internal static DiskTier Over(SlotPool pool, TierFaults faults) => new(pool, faults);

    /// <summary>The pool underneath.</summary>
    public SlotPool Pool { get; }

    /// <inheritdoc />
    public TierId Id => TierId.Disk;

    /// <inheritdoc />
    public TierCost Cost => TierCost.LocalIndex;

    /// <inheritdoc />
    public KvEncoding Encoding => Pool.Identity.Encoding;

    /// <summary>Writes that failed (disk full, I/O errors) since open.</summary>
    public long WriteFailures => Interlocked.Read(ref _writeFailures);

    /// <summary>Whether this process stores new chunks here (false when read-only or after a failed write).</summary>
    public bool Writable => !Pool.IsReadOnly && !_writesOff;

    /// <summary>
    /// Opens (or creates) the pool for <see cref="DiskTierSettings.Identity"/> under the cache directory: read-only
    /// when it cannot be written (or the cache directory belongs to another user), null when it cannot be opened at
    /// all (each reported to <paramref name="faults"/>).
    /// </summary>
    public static DiskTier? TryOpen(DiskTierSettings settings, TierFaults faults, ILogger? logger = null, MismatchPolicy onMismatch = MismatchPolicy.Recreate)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(faults);
        ReportPoolsOfOtherKeys(settings, logger);
        var options = new SlotPoolOptions
        {
            Directory = PoolDirectory(settings.CacheDirectory, settings.Identity, settings.Secret.KeyId),
            Identity = settings.Identity,
            CapacityBytes = Math.Max(settings.CapacityBytes, settings.Identity.SlotBytes),
            Durability = settings.Durability,
            OnMismatch = onMismatch,
            Logger = logger,
            Secret = settings.Secret,
            Encrypt = settings.Encrypt,
            ShareWithGroup = settings.ShareWithGroup,
            Medium = settings.Medium?.Invoke(PoolDirectory(settings.CacheDirectory, settings.Identity, settings.Secret.KeyId)),
            WriterLockTimeout = OpenLockWait, // every process stores: others hold the lock for microseconds per change
        };
        if (!settings.ShareWithGroup && PrivateFiles.Owner(settings.CacheDirectory) is { } owner && owner != PrivateFiles.CurrentUser)
        {
            var why = new UnauthorizedAccessException($"the cache directory {settings.CacheDirectory} belongs to user {owner}, not to this process's user {PrivateFiles.CurrentUser}");
            faults.Report(TierId.Disk, "foreign-directory",
                $"{why.Message}: its entries are served read-only and nothing is written there. Give each user a cache directory of their own (--cache-dir, ORTKV_CACHE_DIR), or share it on purpose (ShareWithGroup, --share-with-group).", why);
            return OpenReadOnly(options, faults, why);
        }
        try
        {
            return new DiskTier(SlotPool.Open(options), faults);
        }
        catch (SlotPoolLockedException e)
        {
            faults.Report(TierId.Disk, "busy",
                $"{e.Message} This process serves {options.Directory} read-only: hits are served, its new chunks stay in memory and are not stored.", e);
            return OpenReadOnly(options, faults, e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            faults.Report(TierId.Disk, "open-writer",
                $"the pool {options.Directory} cannot be written ({e.Message}); serving what it holds read-only. Give the cache a writable directory with free space (--cache-dir, ORTKV_CACHE_DIR), or --no-cache.", e);
            return OpenReadOnly(options, faults, e);
        }
    }

    /// <summary>How long opening waits for the pool's writer lock: a holder that keeps it longer is stuck (stopped, or on a hung disk).</summary>
    private static readonly TimeSpan OpenLockWait = TimeSpan.FromSeconds(30);

    /// <summary>How long a process that lost the race to create a new pool waits for its creator to finish.</summary>
    private static readonly TimeSpan CreationWait = TimeSpan.FromSeconds(2);

    private static DiskTier? OpenReadOnly(SlotPoolOptions options, TierFaults faults, Exception why)
    {
        try
        {
            for (var clock = System.Diagnostics.Stopwatch.StartNew(); why is SlotPoolLockedException && clock.Elapsed < CreationWait && !SlotPool.HasDataFile(options.Directory);)
                Thread.Sleep(10); // another process holds the lock to create it
            return new DiskTier(SlotPool.Open(options with { ReadOnly = true }), faults);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            faults.Report(TierId.Disk, "open",
                $"the disk cache is off for this process: {options.Directory} cannot be opened ({(e is FileNotFoundException ? why.Message : e.Message)}). Requests run with host memory only. Give the cache a writable directory (--cache-dir, ORTKV_CACHE_DIR), or --no-cache.", e);
            return null;
        }
    }

    /// <summary>
    /// Pools of this model and chunk length that another key wrote (the key was replaced, or the fleet's changed): this
    /// process can neither read nor reuse them, so it says so once in the log, with what they take and how to remove them.
    /// </summary>
    private static void ReportPoolsOfOtherKeys(DiskTierSettings settings, ILogger? logger)
    {
        try
        {
            string mine = Path.GetFileName(PoolDirectory(settings.CacheDirectory, settings.Identity, settings.Secret.KeyId));
            string stem = mine[..(mine.LastIndexOf("-k", StringComparison.Ordinal) + 2)];
            var others = SlotPool.FindAll(settings.CacheDirectory).Where(d => Path.GetFileName(d) is var name && name != mine && name.StartsWith(stem, StringComparison.Ordinal)).ToList();
            if (others.Count == 0) return;
            long bytes = others.Sum(d => SlotPool.Usage(d).FileBytes);
            string note = $"{others.Count} pool(s) of this model under {settings.CacheDirectory} were written under another key (key id {string.Join(", ", others.Select(KeyIdOfPoolDirectory))}; files of {bytes / 1e6:F1} MB): this process cannot use them. `ortkv cache prune --other-keys` removes them; or set the key that wrote them (ORTKV_CACHE_KEY).";
            // Information, not a warning: processes with different keys may share a directory on purpose.
            logger?.LogInformation("Prefix cache, disk tier: {Note}", note);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Only a note: nothing to degrade around.
        }
    }

    /// <summary>The key id a pool directory's name carries (<see cref="PoolDirectory"/>), or null for a name the cache did not make.</summary>
    internal static string? KeyIdOfPoolDirectory(string poolDirectory)
    {
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(poolDirectory));
        int at = name.LastIndexOf("-k", StringComparison.Ordinal);
        var id = at < 0 ? "" : name[(at + 2)..];
        return id.Length == 12 && id.All(char.IsAsciiHexDigitLower) ? id : null;
    }

    /// <summary>
    /// The pool directory for an identity and a key: <c>CACHE_DIR/&lt;fingerprint&gt;-c&lt;chunk tokens&gt;-&lt;fp16|fp32&gt;[-int8|-int4]-k&lt;key id&gt;</c>
    /// (processes with different keys never share a pool; each encoding has its own).
    /// </summary>
    public static string PoolDirectory(string cacheDirectory, SlotPoolIdentity identity, string keyId) =>
        Path.Combine(cacheDirectory, $"{identity.Fingerprint}-c{identity.ChunkTokens}-{identity.Shape.ElementName}{(identity.Encoding == KvEncoding.Exact ? "" : "-" + identity.Encoding.Name())}-k{keyId}");

    /// <inheritdoc />
    public bool Contains(ChunkKey key)
    {
        try
        {
            return Pool.Contains(key);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _faults.Report(Id, "read", $"reading the index of {Pool.Directory} failed ({e.Message}); its chunks are misses.", e);
            return false;
        }
    }

    /// <inheritdoc />
    public bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination) =>
        Pool.TryGet(key, tokens, destination, out int length) && length == destination.Length;

    /// <inheritdoc />
    public ChunkRead? BeginRead(ChunkKey key, ReadOnlySpan<int> tokens)
    {
        try
        {
            return Pool.Find(key) is { } entry ? Pool.BeginRead(entry, tokens) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            _faults.Report(Id, "read", $"reading {Pool.Directory} failed ({e.Message}); such chunks are misses and are computed instead.", e);
            return null;
        }
    }

    /// <inheritdoc />
    public bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        if (!Writable) return false;
        try
        {
            return Pool.Put(key, tokens, payload);
        }
        catch (SlotPoolLockedException e)
        {
            _faults.Report(Id, "not-stored", $"other processes held the lock of {Pool.Directory} past the wait; a chunk was not stored (it stays in memory).", e);
            return false;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Interlocked.Increment(ref _writeFailures);
            _writesOff = true;
            _faults.Report(Id, "write", $"storing to {Pool.Directory} failed ({e.Message}); new chunks stay in memory for the rest of this process, hits are still served. Free disk space or fix the directory's permissions.", e);
            return false;
        }
    }

    /// <inheritdoc />
    public void Touch(IReadOnlyList<ChunkKey> keys)
    {
        if (Pool.IsReadOnly) return;
        try
        {
            Pool.Touch(keys);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _faults.Report(Id, "touch", $"marking entries of {Pool.Directory} as used failed ({e.Message}); they may be evicted sooner.", e);
        }
    }

    /// <inheritdoc />
    public bool Remove(ChunkKey key)
    {
        try
        {
            return Writable && Pool.Remove(key);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _faults.Report(Id, "remove", $"removing an entry from {Pool.Directory} failed ({e.Message}).", e);
            return false;
        }
    }

    /// <inheritdoc />
    public void Clear()
    {
        if (Writable) Pool.Clear();
    }

    /// <inheritdoc />
    public void Flush()
    {
        if (!Writable) return;
        try
        {
            Pool.Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _faults.Report(Id, "flush", $"making {Pool.Directory} durable failed ({e.Message}); entries written before stay readable.", e);
        }
    }

    /// <inheritdoc />
    public KvTierStats GetStats()
    {
        var s = Pool.GetStats();
        return new KvTierStats
        {
            Name = Id.Name, Entries = s.Entries, Bytes = s.PayloadBytes, CapacityBytes = (long)s.SlotCount * Pool.Identity.PayloadBytes,
            Hits = s.Hits, Misses = s.Misses, Writes = s.Puts, Evictions = s.Evictions, ReadOnly = !Writable,
        };
    }

    /// <inheritdoc />
    public void Dispose() => Pool.Dispose();
}
