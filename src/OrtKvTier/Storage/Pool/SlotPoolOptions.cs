using Microsoft.Extensions.Logging;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>When written entries reach stable storage.</summary>
public enum Durability
{
    /// <summary>Never fsync; the OS writes back when it likes. A crash may lose recent entries, never integrity.</summary>
    None,
    /// <summary>Group commit: data and journal are fsynced together every <see cref="SlotPoolOptions.BatchInterval"/> and on Flush/Dispose.</summary>
    Batched,
    /// <summary>Put returns after the slot and its journal record are fsynced.</summary>
    EveryWrite,
}

/// <summary>What to do when the files on disk belong to another model, layout or format.</summary>
public enum MismatchPolicy
{
    /// <summary>Throw <see cref="SlotPoolMismatchException"/> naming both values; nothing is touched.</summary>
    Refuse,
    /// <summary>Delete the pool's files and create a new, empty pool.</summary>
    Recreate,
}

/// <summary>How to create or open a <see cref="SlotPool"/>.</summary>
public sealed record SlotPoolOptions
{
    /// <summary>The pool's directory (created if missing).</summary>
    public required string Directory { get; init; }

    /// <summary>What the bytes belong to. Null only for <see cref="ReadOnly"/> tools that take the identity from the file.</summary>
    public SlotPoolIdentity? Identity { get; init; }

    /// <summary>
    /// Capacity in bytes of disk, rounded down to whole slots (the file grows on demand up to it). Give this or
    /// <see cref="CapacitySlots"/>; a writer opening an existing pool of another capacity resizes it (shrinking
    /// keeps the most recently used entries). Neither: an existing pool keeps its capacity.
    /// </summary>
    public long? CapacityBytes { get; init; }

    /// <summary>Capacity in slots; like <see cref="CapacityBytes"/>.</summary>
    public int? CapacitySlots { get; init; }

    /// <summary>Open for reading only (no lock; other processes may write). Default false.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>When entries become durable. Default <see cref="Durability.Batched"/>.</summary>
    public Durability Durability { get; init; } = Durability.Batched;

    /// <summary>Group-commit period for <see cref="Durability.Batched"/>. Default 200 ms.</summary>
    public TimeSpan BatchInterval { get; init; } = TimeSpan.FromMilliseconds(200);

    /// <summary>What to do when existing files do not match. Default <see cref="MismatchPolicy.Refuse"/>.</summary>
    public MismatchPolicy OnMismatch { get; init; } = MismatchPolicy.Refuse;

    /// <summary>
    /// How long opening as a writer waits for another process's writer lock before giving up (a
    /// <c>SlotPoolLockedException</c>; open read-only then). Default 0 (fail at once). Changes (puts, removals) hold the
    /// lock for microseconds and wait for it at least 10 s, or this when longer.
    /// </summary>
    public TimeSpan WriterLockTimeout { get; init; } = TimeSpan.Zero;

    /// <summary>
    /// How long a slot reserved by a writer stays its own while it writes the payload: past it (the writer died, or
    /// stalled that long) another writer may reclaim the slot, and the late writer's entry is not stored. Default 60 s.
    /// </summary>
    internal TimeSpan ReservationTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>Journal records after which a writer compacts; null: twice the entries plus 1024 (tests and benches set it to keep or force a long journal).</summary>
    internal long? CompactAfterRecords { get; init; }

    /// <summary>Where the pool's files live; null: a directory on disk (<see cref="Directory"/>). Tests run pools on memory and on injected faults.</summary>
    internal IStorageMedium? Medium { get; init; }

    /// <summary>Receives events for misses caused by damage or mismatch, and recoveries.</summary>
    public ILogger? Logger { get; init; }

    /// <summary>
    /// The secret key that authenticates entries (at least 16 bytes; 32 random bytes recommended). Null: the
    /// <c>ORTKV_CACHE_KEY</c> environment variable (hex or base64), else the <c>cache.key</c> file in the directory
    /// that holds the pool's directory, created (32 random bytes, mode 0600) when a writer finds none. Entries
    /// written under another key are misses.
    /// </summary>
    public byte[]? SecretKey { get; init; }

    /// <summary>Encrypt the payload and token ids of entries this handle writes (AES-CTR under per-entry keys; entries stay authenticated either way). Default false.</summary>
    public bool Encrypt { get; init; }

    /// <summary>
    /// Share the pool with the directory's group on purpose: directories this handle creates are 0770 and files in
    /// them 0660 (not 0700/0600), and a key file of another member is trusted. Every member can then read and forge
    /// entries: use it only for a group of one trust domain. Default false.
    /// </summary>
    public bool ShareWithGroup { get; init; }

    /// <summary>The resolved secret (set by the prefix cache, or by <see cref="ResolveSecret"/>).</summary>
    internal CacheSecret? Secret { get; init; }

    /// <summary>These options with <see cref="Secret"/> resolved as <see cref="SecretKey"/> says, for the pool in <paramref name="directory"/>.</summary>
    internal SlotPoolOptions ResolveSecret(string directory) => Secret is not null ? this : this with
    {
        Secret = CacheKeys.Resolve(SecretKey, Path.GetDirectoryName(Path.TrimEndingDirectorySeparator(directory)) ?? directory, create: !ReadOnly, ShareWithGroup),
    };

    /// <summary>Throws when the options are inconsistent.</summary>
    public void Validate()
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(Directory);
        if (!ReadOnly && Identity is null)
            throw new ArgumentException("A writable pool needs an Identity (model fingerprint and layout).", nameof(Identity));
        if (CapacityBytes is not null && CapacitySlots is not null)
            throw new ArgumentException("Give CapacityBytes or CapacitySlots, not both.");
        if (CapacityBytes is <= 0) throw new ArgumentOutOfRangeException(nameof(CapacityBytes), CapacityBytes, "CapacityBytes must be positive.");
        if (CapacitySlots is <= 0) throw new ArgumentOutOfRangeException(nameof(CapacitySlots), CapacitySlots, "CapacitySlots must be positive.");
        if (Identity is not null && CapacityBytes is long bytes && bytes < Identity.SlotBytes)
            throw new ArgumentOutOfRangeException(nameof(CapacityBytes), bytes, $"CapacityBytes must hold at least one slot of {Identity.SlotBytes} bytes.");
        if (BatchInterval <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(BatchInterval), BatchInterval, "BatchInterval must be positive.");
        if (SecretKey is { Length: < CacheSecret.MinKeyBytes })
            throw new ArgumentException($"SecretKey needs at least {CacheSecret.MinKeyBytes} bytes ({CacheSecret.KeyBytes} random bytes recommended); got {SecretKey.Length}.", nameof(SecretKey));
        if (WriterLockTimeout < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(WriterLockTimeout), WriterLockTimeout, "WriterLockTimeout must not be negative.");
        if (ReservationTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(ReservationTimeout), ReservationTimeout, "ReservationTimeout must be positive.");
    }
}
