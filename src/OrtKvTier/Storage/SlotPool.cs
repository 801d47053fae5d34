using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// The disk tier: one file of fixed-size slots (sparse, growing on demand) holding chunk KV bytes, indexed by
/// <see cref="ChunkKey"/> through a crash-safe journal and snapshot. A read returns the bytes stored under the key
/// or a miss, never other bytes: it checks the slot header and the checksum of the bytes it copied. Any number of
/// processes store into one pool (each change under the directory's OS lock, caught up with the others' journal
/// first) and read it; thread-safe within a process.
/// </summary>
public sealed unsafe partial class SlotPool : IDisposable
{
    private readonly SlotPoolOptions _options;
    private readonly SlotFile _file;
    private readonly IndexLog _log;
    private readonly uint _writerEpoch;
    private readonly int _parallelism = Math.Clamp(Environment.ProcessorCount, 1, 8);
    private readonly ILogger? _logger;

    /// <summary>The index lock: guards <see cref="_index"/>, <see cref="_log"/> and the counters. Held briefly; no fsync under it.</summary>
    private readonly Lock _gate = new();
    private readonly SlotIndex _index;
    private uint _nextGenerationLow = 1;
    /// <summary>Slot data written since the last fsync.</summary>
    private bool _dataDirty;

    /// <summary>Serializes compaction, flushes and clears within the process (taken before <see cref="_gate"/>; puts only take <see cref="_gate"/>).</summary>
    private readonly Lock _writeGate = new();

    /// <summary>Held by every use of the data file; Dispose waits for them before closing it.</summary>
    private readonly UseGuard _lifetime = new(nameof(SlotPool));
    private readonly Timer? _batchTimer;
    private bool _disposed;

    private long _hits, _misses, _damaged, _puts, _evictions;

    private SlotPool(SlotPoolOptions options, SlotFile file)
    {
        _options = options;
        _logger = options.Logger;
        _file = file;
        Directory = file.Directory;
        Identity = file.Header.Identity;
        SlotBytes = file.Header.SlotBytes;
        SlotCount = (int)file.Header.SlotCount;
        PayloadCapacity = file.PayloadCapacity;
        _writerEpoch = file.Header.WriterEpoch;
        IsReadOnly = !file.IsWriter;
        _index = new SlotIndex(SlotCount);
        _log = new IndexLog(Directory, file.Header.PoolId, new IndexJournal(file.Secret), options.BeforeWrite, _logger);
        if (!IsReadOnly && options.Durability == Durability.Batched)
            _batchTimer = new Timer(_ => FlushIfDirty(), null, options.BatchInterval, options.BatchInterval);
    }

    /// <summary>The pool directory (full path).</summary>
    public string Directory { get; }
    /// <summary>What the stored bytes belong to.</summary>
    public SlotPoolIdentity Identity { get; }
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

    /// <summary>Creates or opens the pool in <see cref="SlotPoolOptions.Directory"/> (a writer takes its lock and creates the file if missing; another identity or format is refused or recreated per <see cref="SlotPoolOptions.OnMismatch"/>).</summary>
    public static SlotPool Open(SlotPoolOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var directory = Path.GetFullPath(options.Directory);
        options = options.ResolveSecret(directory);
        if (!options.ReadOnly && ShrinkRequested(options, directory) is { } slots) ShrinkByCopy(options, directory, slots);
        PoolLock.Hold? openHold = null;
        var file = options.ReadOnly ? SlotFile.OpenReader(options, directory) : SlotFile.OpenWriter(options, directory, out openHold);
        SlotPool? pool = null;
        try
        {
            pool = new SlotPool(options, file);
            if (pool.LoadIndex() || file.ResizedFrom is not null) pool.Compact();
            if (file.ResizedFrom is { } before)
                options.Logger?.LogInformation("Slot pool {Directory}: resized from {Before} to {After} slots.", pool.Directory, before, pool.SlotCount);
            return pool;
        }
        catch
        {
            if (pool is not null) pool.Dispose();
            else file.Dispose();
            throw;
        }
        finally
        {
            openHold?.Dispose();
        }
    }

    /// <summary>The slot count a writer asks for when it is below the existing pool's (of the same identity).</summary>
    private static long? ShrinkRequested(SlotPoolOptions options, string directory)
    {
        var dataPath = Path.Combine(directory, DataFileName);
        if (!File.Exists(dataPath)) return null;
        try
        {
            var header = SlotFile.ReadHeaderOf(dataPath);
            return header.Identity == options.Identity && SlotFile.SlotsFor(options, header.SlotBytes) is { } slots && slots < header.SlotCount ? slots : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // OpenWriter says what is wrong with it
        }
    }

    /// <summary>
    /// Shrinks a pool keeping its most recently used entries: they are copied, verified, least recently used first, into
    /// a new pool of <paramref name="slots"/> slots beside it (whose own eviction keeps the most recent), which then
    /// replaces it under the writer lock. A process that has the old pool open keeps serving its old file.
    /// </summary>
    private static void ShrinkByCopy(SlotPoolOptions options, string directory, long slots)
    {
        var staging = Path.Combine(directory, ".shrink");
        SlotFile.DeletePoolFiles(staging);
        using (var old = Open(options with { CapacitySlots = null, CapacityBytes = null }))
        using (var fresh = Open(options with { Directory = staging, CapacitySlots = checked((int)slots), CapacityBytes = null, OnMismatch = MismatchPolicy.Recreate }))
        {
            var buffer = new byte[old.PayloadCapacity];
            foreach (var (key, _, _) in old.Entries())
                if (old.TryGetStored(key, buffer, out var tokens, out int length)) fresh.Put(key, tokens, buffer.AsSpan(0, length));
        }
        using (SlotFile.AcquireWriterLock(directory, options.WriterLockTimeout))
        {
            foreach (var name in new[] { DataFileName, JournalFileName, SnapshotFileName })
                File.Move(Path.Combine(staging, name), Path.Combine(directory, name), overwrite: true);
            DirectorySync.Flush(directory);
        }
        System.IO.Directory.Delete(staging, recursive: true);
        options.Logger?.LogInformation("Slot pool {Directory}: shrunk to {Slots} slots, keeping the most recently used entries.", directory, slots);
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

    /// <summary>Opens whatever pool is in <paramref name="directory"/> for reading, taking its identity from the file.</summary>
    public static SlotPool OpenExisting(string directory, bool readOnly = true)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (readOnly) return Open(new SlotPoolOptions { Directory = directory, ReadOnly = true });
        var header = SlotFile.ReadHeaderOf(Path.Combine(Path.GetFullPath(directory), DataFileName));
        return Open(new SlotPoolOptions { Directory = directory, Identity = header.Identity });
    }

    /// <summary>
    /// Stores <paramref name="payload"/> under <paramref name="key"/> with the chunk's token ids,
    /// evicting the least recently used entry when full. Returns false when the key is already
    /// stored (it is marked used), is being stored by another thread, or every slot is being written.
    /// Throws <see cref="IOException"/> when the write fails; earlier entries stay readable.
    /// Any number of threads may put at once: each writes its own slot (payload hashed and written
    /// block by block on several threads, then the header); only choosing the slot and journaling
    /// the entry are serialized.
    /// </summary>
    public bool Put(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        ThrowIfUnusable(write: true);
        if (tokens.Length > Identity.ChunkTokens)
            throw new ArgumentException($"A chunk holds at most {Identity.ChunkTokens} tokens; got {tokens.Length}.", nameof(tokens));
        if (payload.Length > PayloadCapacity)
            throw new ArgumentException($"A slot holds at most {PayloadCapacity} payload bytes; got {payload.Length}.", nameof(payload));

        using var hold = HoldLock();
        if (!TryReserveSlot(key, out int slot, out ulong generation)) return false;
        var entry = new SlotEntry(key, slot, generation, tokens.Length, payload.Length);
        bool published = false;
        try
        {
            using var file = UseFile();
            _file.WriteSlot(entry, tokens, payload, _parallelism);
            if (_options.Durability == Durability.EveryWrite) RandomAccess.FlushToDisk(_file.Data);
            SafeFileHandle? journal;
            lock (_gate)
            {
                _log.WritePendingTouches();
                _log.Append(_log.Codec.PutRecord(entry));
                _index.Put(entry);
                _puts++;
                _log.Dirty = _dataDirty = true;
                published = true;
                journal = _log.Journal;
            }
            // Outside the index lock: reads go on while the disk catches up.
            if (_options.Durability == Durability.EveryWrite) IndexLog.FlushToDisk(journal);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"Could not store chunk {key} in slot {slot} of {_file.DataPath}: {e.Message} Entries stored earlier are unaffected.", e);
        }
        finally
        {
            if (!published)
                lock (_gate) _index.Release(slot);
        }
        MaybeCompact();
        return true;
    }

    /// <summary>Takes a slot for <paramref name="key"/> (free, or the least recently used entry's, journaled as removed first).</summary>
    private bool TryReserveSlot(ChunkKey key, out int slot, out ulong generation)
    {
        slot = 0;
        generation = 0;
        lock (_gate)
        {
            if (_index.Contains(key))
            {
                TouchLocked(key);
                return false;
            }
            if (_index.IsBeingWritten(key)) return false;
            if (_index.TakeFree(key) is int free) slot = free;
            else
            {
                if (_index.Oldest is not { } victim) return false; // every slot is being written by another thread
                try { _log.Append(_log.Codec.RemoveRecord(victim.Key)); } // journaled first: if that fails, nothing changed
                catch (IOException e) { throw new IOException($"Could not store chunk {key}: journaling the eviction of the oldest entry failed: {e.Message} Entries stored earlier are unaffected.", e); }
                _index.Remove(victim.Key);
                _evictions++;
                _log.Dirty = true;
                slot = _index.TakeFree(key)!.Value;
            }
            generation = ((ulong)_writerEpoch << 32) | _nextGenerationLow++;
            return true;
        }
    }

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
        if (BeginRead(key, tokens, scatter) is not { } read) return false;
        ReadBlocks(read, 0, read.Blocks);
        if (!EndRead(read)) return false;
        payloadLength = (int)read.PayloadLength;
        return true;
    }

    /// <summary>Starts a verified read into <paramref name="scatter"/> done in steps (<see cref="ReadBlocks"/>, then <see cref="EndRead"/>): finds the entry and checks its header. Null on a miss.</summary>
    internal SlotRead? BeginRead(ChunkKey key, ReadOnlySpan<int> tokens, PayloadScatter scatter)
    {
        ThrowIfUnusable(write: false);
        SlotEntry entry;
        lock (_gate)
            if (!TryFindLocked(key, out entry))
            {
                _misses++;
                return null;
            }
        bool contiguous = scatter.IsContiguous;
        using (UseFile())
        {
            var failure = _file.CheckSlot(entry, out var found, out var fields, checkTokens: true, tokens: tokens);
            if (failure is null && found.PayloadLength != entry.PayloadLength) failure = $"the index says {entry.PayloadLength} payload bytes, the slot {found.PayloadLength}";
            if (failure is null && contiguous && found.PayloadLength > scatter.CopyBytes)
                throw new ArgumentException($"The destination holds {scatter.CopyBytes} bytes; the entry for {key} has {found.PayloadLength}.", nameof(scatter));
            if (failure is null && !contiguous && found.PayloadLength != scatter.Length)
                failure = $"payload of {found.PayloadLength} bytes does not match the {scatter.Length}-byte destination";
            if (failure is null) return new SlotRead(entry, fields.PayloadTag, ChunkRecord.SealOf(fields, _file.Secret), found.PayloadLength, scatter);
            lock (_gate) DropLocked(entry, failure);
            return null;
        }
    }

    /// <summary>Reads (and hashes) blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive) of a read begun by <see cref="BeginRead"/>.</summary>
    internal void ReadBlocks(SlotRead read, int firstBlock, int endBlock)
    {
        using (UseFile())
            PayloadSeal.ReadBlocks(_file.Data, _file.PayloadOffset(read.Entry.Slot), read.Scatter, read.PayloadLength,
                firstBlock, endBlock, read.BlockTags, read.Seal, _parallelism);
    }

    /// <summary>Verifies a read whose every block was read: true when the bytes read are the bytes stored (a hit), else a miss that drops the entry.</summary>
    internal bool EndRead(SlotRead read)
    {
        bool intact = read.Seal.Combine(read.BlockTags) == read.Tag;
        lock (_gate)
        {
            if (intact)
            {
                _hits++;
                TouchLocked(read.Entry.Key);
                return true;
            }
            DropLocked(read.Entry, "payload tag mismatch (damaged, forged, or rewritten while reading)");
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
    public bool Contains(ChunkKey key)
    {
        ThrowIfUnusable(write: false);
        lock (_gate) return TryFindLocked(key, out _);
    }

    /// <summary>Removes an entry; false when there was none.</summary>
    public bool Remove(ChunkKey key)
    {
        ThrowIfUnusable(write: true);
        using var hold = HoldLock();
        using var file = UseFile();
        lock (_writeGate)
        lock (_gate)
        {
            if (!_index.TryGet(key, out var entry)) return false;
            _log.Append(_log.Codec.RemoveRecord(key));
            _index.Remove(key);
            _log.Dirty = _dataDirty = true;
            _file.Invalidate(entry.Slot); // so a rebuild from slot headers does not bring it back
            return true;
        }
    }

    /// <summary>Removes every entry, frees the slots' disk space and compacts the index.</summary>
    public void Clear()
    {
        ThrowIfUnusable(write: true);
        using var hold = HoldLock();
        using var file = UseFile();
        lock (_writeGate)
        {
            lock (_gate)
            {
                _index.Clear();
                _log.Append(_log.Codec.ClearRecord());
                _log.Dirty = _dataDirty = true;
                _file.ZeroSlots();
            }
            Compact();
        }
    }

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
                Hits = _hits, Misses = _misses, Damaged = _damaged, Puts = _puts, Evictions = _evictions, JournalRecords = _log.Records, SkippedRecords = _log.SkippedRecords,
            };
    }

    /// <summary>Reads and checks every indexed slot (header and payload checksum); drops what fails.</summary>
    public SlotPoolVerifyReport Verify()
    {
        ThrowIfUnusable(write: false);
        var clock = Stopwatch.StartNew();
        List<SlotEntry> entries;
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

    /// <summary>Flushes per the durability setting, compacts a writer's journal and releases the lock.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _batchTimer?.Dispose();
        if (!IsReadOnly)
        {
            try
            {
                using var hold = _file.Lock!.TryAcquire(CatchUp, CloseLockWait);
                if (hold is not null && (_log.Records > 0 || _log.HasPendingTouches || _needsCompaction)) CompactHeld();
                else if (_options.Durability != Durability.None) Flush();
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                _logger?.LogWarning(e, "Slot pool {Directory}: could not compact on close; the journal will be replayed on the next open.", Directory);
            }
        }
        _lifetime.Close(() =>
        {
            _disposed = true;
            _file.Dispose();
            lock (_gate) _log.Dispose();
        });
    }

    /// <summary>Loads the index; true when a writer must compact (journal unusable or index rebuilt).</summary>
    private bool LoadIndex()
    {
        lock (_gate)
            return _log.Load(_index, writer: !IsReadOnly, _file.Created, () =>
            {
                foreach (var entry in _file.ScanSlots()) _index.Put(entry);
            });
    }

    private void DropLocked(SlotEntry entry, string reason)
    {
        _damaged++;
        _misses++;
        if (!_index.RemoveIfSame(entry)) return;
        Dropped?.Invoke(entry.Key, reason);
        _logger?.LogWarning("Slot pool {Directory}: slot {Slot} for chunk {Key} is a miss: {Reason}. The entry was dropped.", Directory, entry.Slot, entry.Key, reason);
        if (!IsReadOnly) _log.DeferRemove(entry.Key);
    }

    // ---- writing ----

    /// <summary>Marks an entry used; a writer journals it with the next put, flush or a full batch (a read never waits on the disk).</summary>
    private void TouchLocked(ChunkKey key)
    {
        _index.Touch(key);
        if (!IsReadOnly) _log.Touch(key);
    }

    /// <summary>The entry under <paramref name="key"/>; a reader first catches up with what other processes journaled.</summary>
    private bool TryFindLocked(ChunkKey key, out SlotEntry entry) =>
        _index.TryGet(key, out entry) || (_log.Refresh(_index) && _index.TryGet(key, out entry));

    private UseGuard.Use UseFile() => _lifetime.Enter();

    private void ThrowIfUnusable(bool write)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (write && IsReadOnly) throw new InvalidOperationException($"The slot pool in {Directory} is open read-only; open it without ReadOnly to write.");
    }
}
