using System.Diagnostics;
using Microsoft.Extensions.Logging;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using OrtKvTier.Tensors;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// The disk tier: one file of fixed-size slots (sparse, growing on demand) holding chunk KV bytes, indexed by
/// <see cref="ChunkKey"/> through a crash-safe journal and snapshot. A read returns the bytes stored under the key
/// or a miss, never other bytes: it checks the slot header and the tag of the bytes it copied. Any number of
/// processes store into one pool at once and read it: a put reserves its slot in the journal under the directory's OS
/// lock, writes the slot with no lock held, then journals the entry under the lock again; readers follow the journal
/// incrementally. Thread-safe within a process.
/// </summary>
public sealed unsafe partial class SlotPool : IDisposable
{
    private readonly SlotPoolOptions _options;
    private readonly SlotFile _file;
    private readonly IndexLog _log;
    /// <summary>The writer lock (null for a read-only handle).</summary>
    private readonly PoolLock? _lock;
    /// <summary>Says this writer is alive (so others leave its slot reservations alone) while it is open.</summary>
    private IDisposable? _alive;
    /// <summary>Set once this handle waited for <see cref="LockedPathsWarmUp"/>.</summary>
    private bool _warm;
    private readonly uint _writerEpoch;
    private readonly int _parallelism = Math.Clamp(Environment.ProcessorCount, 1, 8);
    private readonly ILogger? _logger;

    /// <summary>The index lock: guards <see cref="_index"/>, the counters and the generation counter. Held briefly, in-memory work only.</summary>
    private readonly Lock _gate = new();
    private readonly SlotIndex _index;
    private uint _nextGenerationLow = 1;
    /// <summary>Slot data written since the last fsync.</summary>
    private bool _dataDirty;

    /// <summary>Held by every use of the files; Dispose waits for them before closing them.</summary>
    private readonly UseGuard _lifetime = new(nameof(SlotPool));
    private readonly Timer? _batchTimer;
    private bool _disposed;

    private long _hits, _misses, _damaged, _puts, _evictions, _notStored, _lookups;

    private SlotPool(SlotPoolOptions options, SlotFile file, PoolLock? writerLock)
    {
        _options = options;
        _logger = options.Logger;
        _file = file;
        _lock = writerLock;
        Directory = file.Medium.Location;
        Identity = file.Header.Identity;
        Codec = KvCodec.For(Identity.Encoding, Identity.Shape, Identity.ChunkTokens);
        SlotBytes = file.Header.SlotBytes;
        SlotCount = (int)file.Header.SlotCount;
        PayloadCapacity = file.PayloadCapacity;
        _writerEpoch = file.Header.WriterEpoch;
        IsReadOnly = writerLock is null;
        _index = new SlotIndex(SlotCount);
        _log = new IndexLog(file.Medium, file.Header.PoolId, new JournalCodec(file.Secret), _gate, _index, writable: !IsReadOnly, _logger, options.CompactAfterRecords);
        if (!IsReadOnly && options.Durability == Durability.Batched)
            _batchTimer = new Timer(_ => FlushIfDirty(), null, options.BatchInterval, options.BatchInterval);
    }

    /// <summary>The pool directory (full path).</summary>
    public string Directory { get; }
    /// <summary>What the stored bytes belong to.</summary>
    public SlotPoolIdentity Identity { get; }
    /// <summary>Encodes what <see cref="Put"/> is given and decodes what reads place, for an encoded pool; null for an exact one.</summary>
    internal KvCodec? Codec { get; }
    /// <summary>Slots in the file.</summary>
    public int SlotCount { get; }
    /// <summary>Bytes per slot, header included.</summary>
    public long SlotBytes { get; }
    /// <summary>Largest payload a slot holds.</summary>
    public long PayloadCapacity { get; }
    /// <summary>Whether this handle only reads.</summary>
    public bool IsReadOnly { get; }

    /// <summary>Raised (under the pool's lock; keep it short) when a read finds a damaged or rewritten slot and drops it.</summary>
    internal event Action<ChunkKey, string>? Dropped;

    /// <summary>Raised when a put could not store its chunk (every slot being written, its reservation reclaimed); the reason says which.</summary>
    internal event Action<ChunkKey, string>? NotStored;

    /// <summary>Creates or opens the pool in <see cref="SlotPoolOptions.Directory"/> (a writer takes its lock and creates the file if missing; another identity or format is refused or recreated per <see cref="SlotPoolOptions.OnMismatch"/>).</summary>
    public static SlotPool Open(SlotPoolOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var directory = Path.GetFullPath(options.Directory);
        options = options.ResolveSecret(directory);
        if (options.Medium is { } given) return OpenOn(options, given);
        var files = new FileMedium(directory); // the pool's own: closed with it
        try
        {
            if (!options.ReadOnly) files.Create(options.ShareWithGroup);
            return OpenOn(options, files);
        }
        catch
        {
            files.Dispose();
            throw;
        }
    }

    private static SlotPool OpenOn(SlotPoolOptions options, IStorageMedium medium)
    {
        if (!options.ReadOnly && ShrinkRequested(options, medium) is { } slots) ShrinkByCopy(options, medium, slots);
        if (options.ReadOnly) return Opened(new SlotPool(options, SlotFile.OpenReader(options, medium), writerLock: null), created: false);

        if (options.Medium is not MemoryMedium) _ = LockedPathsWarmUp.Value; // compiled in the background before this process first changes the pool
        SlotFile.CheckWriterOpen(options, medium); // the checks OpenWriter repeats under the lock, run (and compiled) outside it first
        var writerLock = new PoolLock(medium.OpenLock(LockFileName), medium.Location);
        SlotPool? pool = null;
        SlotFile? file = null;
        IDisposable? alive = null;
        try
        {
            using (writerLock.Acquire(options.WriterLockTimeout))
            {
                file = SlotFile.OpenWriter(options, medium);
                alive = medium.MarkAlive(LivenessFileName, file.Header.WriterEpoch);
                if (file.Created)
                {
                    pool = new SlotPool(options, file, writerLock) { _alive = alive };
                    pool._log.RewriteHeld(); // a new pool's empty index, before any other process sees the file
                }
            }
            pool ??= new SlotPool(options, file, writerLock) { _alive = alive };
            pool._log.RemoveStaleTemporaries();
        }
        catch
        {
            if (pool is not null) pool.Dispose();
            else
            {
                alive?.Dispose();
                file?.Dispose();
                writerLock.Dispose();
            }
            throw;
        }
        if (pool._file.ResizedFrom is { } before)
            options.Logger?.LogInformation("Slot pool {Directory}: resized from {Before} to {After} slots.", pool.Directory, before, pool.SlotCount);
        return Opened(pool, pool._file.Created);
    }

    /// <summary>
    /// Runs every path a writer takes under the cross-process lock once, on a pool in memory, in the background from the
    /// first writer open; a change waits for it before this process first takes a real pool's lock for a change. A cold
    /// process compiles code as it first runs it, and with many processes starting at once on few cores that took a lock
    /// holder hundreds of milliseconds while the others waited.
    /// </summary>
    private static readonly Lazy<Task> LockedPathsWarmUp = new(() => Task.Run(() =>
    {
        var identity = SlotPoolIdentity.For(default, new Model.KvShape(1, 1, 16, 2), 16);
        var options = new SlotPoolOptions
        {
            Directory = "ortkv-lock-warm-up", Medium = new MemoryMedium(), Identity = identity, CapacitySlots = 2, Durability = Durability.Batched,
            Secret = CacheSecret.CreateRandom(),
        };
        var payload = new byte[identity.PayloadBytes];
        using (var pool = Open(options))
        using (var other = Open(options with { ReadOnly = true }))
        {
            for (int i = 0; i < 3; i++) pool.Put(new ChunkKey((UInt128)i + 1), [i], payload);
            other.Contains(new ChunkKey(3));
            pool.Remove(new ChunkKey(3));
            pool.Compact();
            pool.Flush();
        }
    }));

    /// <summary>Loads a new handle's index (repairing unusable index files, for a writer), disposing the handle if that fails.</summary>
    private static SlotPool Opened(SlotPool pool, bool created)
    {
        try
        {
            if (!created) pool.LoadIndex();
            return pool;
        }
        catch
        {
            pool.Dispose();
            throw;
        }
    }

    /// <summary>The slot count a writer asks for when it is below the existing pool's (of the same identity).</summary>
    private static long? ShrinkRequested(SlotPoolOptions options, IStorageMedium medium)
    {
        if (!medium.Exists(DataFileName)) return null;
        try
        {
            var header = SlotFile.ReadHeaderOf(medium);
            return header.Identity == options.Identity && SlotFile.SlotsFor(options, header.SlotBytes) is { } slots && slots < header.SlotCount ? slots : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // OpenWriter says what is wrong with it
        }
    }

    /// <summary>Names of the pool that a shrink stages beside it.</summary>
    private const string ShrinkPrefix = "shrink.";

    /// <summary>
    /// Shrinks a pool keeping its most recently used entries: they are copied, verified, least recently used first, into
    /// a new pool of <paramref name="slots"/> slots staged beside it (names <c>shrink.*</c>; its own eviction keeps the
    /// most recent), which then replaces it under the writer lock. A process that has the old pool open notices the
    /// data file was replaced and stops writing to it.
    /// </summary>
    private static void ShrinkByCopy(SlotPoolOptions options, IStorageMedium medium, long slots)
    {
        var staging = new PrefixedMedium(medium, ShrinkPrefix);
        SlotFile.DeletePoolFiles(staging);
        using (var old = Open(options with { CapacitySlots = null, CapacityBytes = null, Medium = medium }))
        using (var fresh = Open(options with { Medium = staging, CapacitySlots = checked((int)slots), CapacityBytes = null, OnMismatch = MismatchPolicy.Recreate }))
        {
            var buffer = new byte[old.PayloadCapacity];
            foreach (var (key, _, _) in old.Entries())
                if (old.TryGetStored(key, buffer, out var tokens, out int length)) fresh.Put(key, tokens, buffer.AsSpan(0, length));
        }
        using (var writerLock = new PoolLock(medium.OpenLock(LockFileName), medium.Location))
        using (writerLock.Acquire(ChangeLockWait(options)))
        {
            foreach (var name in new[] { DataFileName, SnapshotFileName, JournalFileName })
                medium.Replace(ShrinkPrefix + name, name);
            medium.Sync();
        }
        medium.Delete(ShrinkPrefix + LockFileName);
        options.Logger?.LogInformation("Slot pool {Directory}: shrunk to {Slots} slots, keeping the most recently used entries.", medium.Location, slots);
    }

    /// <summary>A stored entry's bytes and token ids, verified; false when it is gone or damaged.</summary>
    private bool TryGetStored(ChunkKey key, Span<byte> destination, out int[] tokens, out int length)
    {
        (tokens, length) = ([], 0);
        SlotEntry entry;
        lock (_gate)
            if (!_index.TryGet(key, out entry)) return false;
        using (UseFile())
            if (_file.ReadTokens(entry) is { } stored) tokens = stored;
            else return false;
        return TryGet(key, tokens, destination, out length);
    }

    /// <summary>Opens whatever pool is in <paramref name="directory"/>, taking its identity from the file.</summary>
    public static SlotPool OpenExisting(string directory, bool readOnly = true)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (readOnly) return Open(new SlotPoolOptions { Directory = directory, ReadOnly = true });
        return Open(new SlotPoolOptions { Directory = directory, Identity = ReadIdentity(directory), WriterLockTimeout = TimeSpan.FromSeconds(2) });
    }

    /// <summary>
    /// Deletes the pool in <paramref name="directory"/> under its writer lock: its own files only (data, journal, snapshot,
    /// temporaries, a staged shrink, the lock), then the directory if nothing else is left in it. False, deleting nothing,
    /// when another process is changing the pool. A directory that is a symbolic link, or in one, is refused (nothing
    /// behind it is touched), and the files are removed by name in the directory opened once, so swapping its path for a
    /// link meanwhile sends nothing elsewhere; a process that has the pool open goes on with the files it holds open.
    /// </summary>
    public static bool TryDelete(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        var full = Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory));
        using var parent = DirectoryHandle.Open(Path.GetDirectoryName(full) ?? full, FileMedium.LinkFreeLevels - 1);
        using var medium = new FileMedium(full);
        using (var writerLock = new PoolLock(medium.OpenLock(LockFileName), full))
        {
            PoolLock.Holding hold;
            try
            {
                hold = writerLock.Acquire(TimeSpan.FromMilliseconds(200));
            }
            catch (SlotPoolLockedException)
            {
                return false;
            }
            using (hold)
            {
                SlotFile.DeletePoolFiles(new PrefixedMedium(medium, ShrinkPrefix));
                medium.Delete(ShrinkPrefix + LockFileName);
                SlotFile.DeletePoolFiles(medium);
                medium.Delete(LivenessFileName);
                medium.Delete(LockFileName);
            }
        }
        // Only when empty: something else living there is not the pool's to delete.
        parent?.RemoveEmptyDirectory(Path.GetFileName(full));
        return true;
    }

    /// <summary>
    /// The pools in <paramref name="directory"/> (a cache directory), or the directory itself when it is one: directories
    /// holding a regular data file, sorted by name. Links are never followed: a directory that is a link is refused (an
    /// <see cref="IOException"/> naming it), and a link in it is no pool (what it points at is not the cache's).
    /// </summary>
    public static IReadOnlyList<string> FindAll(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        using var open = DirectoryHandle.Open(directory, FileMedium.LinkFreeLevels - 1);
        if (open is null) return [];
        if (open.Find(DataFileName) is { IsFile: true }) return [open.Path];
        return [.. open.Entries().Where(e => e.IsDirectory && open.Find(Path.Combine(e.Name, DataFileName)) is { IsFile: true }).Select(e => open.PathOf(e.Name))];
    }

    /// <summary>Whether <paramref name="directory"/> has a pool's data file (a creator may still be writing its header).</summary>
    internal static bool HasDataFile(string directory)
    {
        try
        {
            using var medium = new FileMedium(directory);
            return medium.Exists(DataFileName);
        }
        catch (IOException)
        {
            return false;
        }
    }

    /// <summary>When the pool in <paramref name="directory"/> was last written (its newest file: the journal gets every put and, in batches, every use) and the bytes its files take.</summary>
    public static (DateTime LastWrite, long FileBytes) Usage(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        using var medium = new FileMedium(directory);
        var names = medium.Names();
        return (names.Select(medium.LastWrite).OfType<DateTime>().DefaultIfEmpty(DateTime.MinValue).Max(), names.Sum(n => medium.Identify(n)?.Length ?? 0));
    }

    /// <summary>The id of the key this process opened the pool with (12 hex digits; the cache names a pool's directory after the key that writes it).</summary>
    public string KeyId => _file.Secret.KeyId;

    /// <summary>What the pool in <paramref name="directory"/> holds, from its data file's header; an <see cref="IOException"/> says why it cannot be read.</summary>
    public static SlotPoolIdentity ReadIdentity(string directory)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        using var medium = new FileMedium(directory);
        return SlotFile.ReadHeaderOf(medium).Identity;
    }

    /// <summary>The format version a pool that could not be opened was written in, when that is why; null otherwise.</summary>
    public static uint? FoundVersion(Exception failure) => (failure as SlotPoolMismatchException)?.FoundVersion;

    /// <summary>Copies the payload under <paramref name="key"/> into <paramref name="destination"/>, verified; false on a miss (damaged or rewritten slots are dropped).</summary>
    public bool TryGet(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination, out int payloadLength)
    {
        fixed (byte* target = destination)
            return TryGet(key, tokens, PayloadScatter.Contiguous(target, destination.Length), out payloadLength);
    }

    /// <summary>Like <see cref="TryGet(ChunkKey, ReadOnlySpan{int}, Span{byte}, out int)"/>, scattering the payload's runs into their destinations (past tensor rows).</summary>
    internal bool TryGet(ChunkKey key, ReadOnlySpan<int> tokens, PayloadScatter scatter, out int payloadLength)
    {
        payloadLength = 0;
        if (Find(key) is not { } entry || BeginRead(entry, tokens) is not { } read) return false;
        read.PlaceAll(scatter);
        if (!read.Finish()) return false;
        payloadLength = (int)read.Length;
        return true;
    }

    /// <summary>
    /// The entry indexed under <paramref name="key"/>, or null. One lookup: on a miss this handle first reads what other
    /// processes journaled since its last look (nothing when the journal did not grow), then looks again.
    /// </summary>
    internal SlotEntry? Find(ChunkKey key)
    {
        ThrowIfUnusable(write: false);
        Interlocked.Increment(ref _lookups);
        lock (_gate)
            if (_index.TryGet(key, out var entry)) return entry;
        using (UseFile())
            if (!_log.Follow()) return Missed();
        lock (_gate)
            return _index.TryGet(key, out var entry) ? entry : Missed();
    }

    private SlotEntry? Missed()
    {
        Interlocked.Increment(ref _misses);
        return null;
    }

    /// <summary>
    /// Starts a verified read of <paramref name="entry"/> (from <see cref="Find"/>): checks its slot header against the key,
    /// the generation and <paramref name="tokens"/>. Null on a miss (a header that does not check out drops the entry).
    /// </summary>
    internal ChunkRead? BeginRead(SlotEntry entry, ReadOnlySpan<int> tokens)
    {
        ThrowIfUnusable(write: false);
        using (UseFile())
        {
            string? failure;
            SlotEntry found;
            ChunkRecordFields fields;
            try
            {
                failure = _file.CheckSlot(entry, out found, out fields, checkTokens: true, tokens: tokens);
            }
            catch (IOException e)
            {
                // An I/O error says nothing about the entry: a miss, the entry stays.
                _logger?.LogDebug(e, "Slot pool {Directory}: reading the header of slot {Slot} failed.", Directory, entry.Slot);
                Interlocked.Increment(ref _misses);
                return null;
            }
            if (failure is null && found.PayloadLength != entry.PayloadLength) failure = $"the index says {entry.PayloadLength} payload bytes, the slot {found.PayloadLength}";
            if (failure is null) return ChunkRead.FromSlot(this, entry, found.PayloadLength, fields.PayloadTag, ChunkRecord.SealOf(fields, _file.Secret));
            lock (_gate) DropLocked(entry, failure);
            return null;
        }
    }

    /// <summary>Reads (and authenticates) blocks of a read begun by <see cref="BeginRead"/> into <paramref name="scatter"/>.</summary>
    internal void ReadBlocks(ChunkRead read, PayloadScatter scatter, int firstBlock, int endBlock)
    {
        using (UseFile())
            PayloadSeal.ReadBlocks(_file.Data, _file.PayloadOffset(read.Entry.Slot), scatter, read.StoredLength,
                firstBlock, endBlock, read.BlockTags, read.Seal!, _parallelism);
    }

    /// <summary>Ends a read: a hit (counted, marked used) when <paramref name="intact"/>, else a miss that drops the entry.</summary>
    internal bool EndRead(ChunkRead read, bool intact, Exception? failure)
    {
        lock (_gate)
        {
            if (intact)
            {
                _hits++;
                TouchLocked(read.Entry.Key);
                return true;
            }
            if (failure is not null) _misses++; // an I/O error says nothing about the entry: it stays
            else DropLocked(read.Entry, "payload tag mismatch (damaged, forged, or rewritten while reading)");
            return false;
        }
    }

    /// <summary>Marks entries used (served from a tier above this one), so eviction follows use; absent keys are ignored.</summary>
    public void Touch(IEnumerable<ChunkKey> keys)
    {
        ThrowIfUnusable(write: false);
        lock (_gate)
            foreach (var key in keys)
                if (_index.Contains(key)) TouchLocked(key);
    }

    /// <summary>Whether an entry is indexed for <paramref name="key"/> (its bytes are verified only when read).</summary>
    public bool Contains(ChunkKey key) => Find(key) is not null;

    /// <summary>Entries, least recently used first.</summary>
    public IReadOnlyList<(ChunkKey Key, int TokenCount, long PayloadLength)> Entries()
    {
        ThrowIfUnusable(write: false);
        lock (_gate) return _index.Entries().Select(e => (e.Key, e.TokenCount, e.PayloadLength)).ToList();
    }

    /// <summary>Counters and sizes now.</summary>
    public SlotPoolStats GetStats()
    {
        ThrowIfUnusable(write: false);
        lock (_gate)
            return new SlotPoolStats
            {
                Directory = Directory, Identity = Identity, ReadOnly = IsReadOnly, Entries = _index.Count, SlotCount = SlotCount,
                SlotBytes = SlotBytes, FileBytes = FileHeaderBytes + SlotCount * SlotBytes, PayloadBytes = _index.PayloadBytes,
                Hits = Interlocked.Read(ref _hits), Misses = Interlocked.Read(ref _misses), Damaged = _damaged, Puts = _puts, Evictions = _evictions,
                JournalRecords = _log.Records, SkippedRecords = _log.SkippedRecords, NotStored = Interlocked.Read(ref _notStored),
                BeingWritten = _index.Reservations.Count, LockHolds = _lock?.Holds ?? 0, LockWaits = _lock?.Contended ?? 0, IndexLookups = Interlocked.Read(ref _lookups),
            };
    }

    /// <summary>Reads and checks every indexed slot (header and payload tag); drops what fails.</summary>
    public SlotPoolVerifyReport Verify()
    {
        ThrowIfUnusable(write: false);
        var clock = Stopwatch.StartNew();
        List<SlotEntry> entries;
        using (UseFile()) _log.Follow();
        lock (_gate) entries = _index.Entries();
        int dropped = 0;
        long bytes = 0;
        using (UseFile())
            foreach (var entry in entries)
                if (_file.VerifySlot(entry, _parallelism, out long payloadLength) is not { } failure) bytes += payloadLength;
                else
                {
                    dropped++;
                    lock (_gate) DropLocked(entry, failure);
                }
        return new SlotPoolVerifyReport(entries.Count, entries.Count - dropped, dropped, bytes, clock.Elapsed) { SkippedRecords = _log.SkippedRecords };
    }

    /// <summary>Journals what waits (drops, recency), compacts a long journal, flushes per the durability setting, and closes.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _batchTimer?.Dispose();
        if (!IsReadOnly && !_lifetime.IsClosed) CloseWriter();
        _lifetime.Close(() =>
        {
            _disposed = true;
            _file.Dispose();
            _log.Dispose();
            _lock?.Dispose();
            _alive?.Dispose();
            if (_options.Medium is null) (_file.Medium as IDisposable)?.Dispose();
        });
    }

    /// <summary>Loads the index; a writer repairs unusable index files under its lock, a reader rebuilds its own view from the slot headers.</summary>
    private void LoadIndex()
    {
        if (_log.Load(settle: true) is not { } damage) return;
        if (IsReadOnly)
        {
            _log.Rebuild(_file.ScanSlots(), damage);
            return;
        }
        using var hold = HoldForChange(); // repairs what is still wrong once the lock is held
    }

    private void DropLocked(SlotEntry entry, string reason)
    {
        _damaged++;
        _misses++;
        if (!_index.RemoveIfSame(entry)) return;
        Dropped?.Invoke(entry.Key, reason);
        _logger?.LogWarning("Slot pool {Directory}: slot {Slot} for chunk {Key} is a miss: {Reason}. The entry was dropped.", Directory, entry.Slot, entry.Key, reason);
        if (!IsReadOnly) _log.Drop(entry);
    }

    /// <summary>Marks an entry used; a writer journals it with its next change (a read never waits on the disk).</summary>
    private void TouchLocked(ChunkKey key)
    {
        _index.Touch(key);
        if (!IsReadOnly) _log.Touch(key);
    }

    private UseGuard.Use UseFile() => _lifetime.Enter();

    private void ThrowIfUnusable(bool write)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (write && IsReadOnly) throw new InvalidOperationException($"The slot pool in {Directory} is open read-only; open it without ReadOnly to write.");
    }
}
