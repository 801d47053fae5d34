using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Storage.SlotPoolFormat;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// The disk tier: one pre-allocated file of fixed-size slots holding chunk KV bytes, indexed by
/// <see cref="ChunkKey"/> through a crash-safe journal and snapshot.
/// <para>Promise: a read returns the bytes stored under the key or reports a miss, never other
/// bytes. Every read checks the slot header (key, generation, fingerprint, layout, token ids,
/// header checksum) and the checksum of the bytes it copied, in the same pass; damaged or
/// rewritten slots are misses and are dropped.</para>
/// <para>One writer process at a time holds an OS lock (released by the kernel if it dies); any
/// number of read-only handles in other processes read concurrently and see entries journaled
/// before each lookup. Thread-safe within a process.</para>
/// </summary>
public sealed unsafe class SlotPool : IDisposable
{
    private readonly SlotPoolOptions _options;
    private readonly string _dataPath, _journalPath, _snapshotPath;
    private readonly FileStream? _lockFile;
    private readonly FileStream _data;
    private readonly ulong _poolId;
    private readonly uint _writerEpoch;
    private readonly int _parallelism = Math.Clamp(Environment.ProcessorCount, 1, 8);
    private readonly ILogger? _logger;

    /// <summary>Guards <see cref="_index"/>, the journal position and the counters below it.</summary>
    private readonly Lock _gate = new();
    private readonly SlotIndex _index;
    private SafeFileHandle? _journal;
    private long _journalEnd;
    private long _journalEpoch;
    private long _journalRecords;
    private uint _nextGenerationLow = 1;
    /// <summary>Entries added or removed since the last fsync (recency-only records do not count: a read never causes an fsync).</summary>
    private bool _dirty;
    /// <summary>Slot data written since the last fsync.</summary>
    private bool _dataDirty;
    private readonly List<ChunkKey> _pendingTouches = [];
    private const int MaxPendingTouches = 1024;

    /// <summary>Serializes compaction, flushes and clears within the process (puts only take <see cref="_gate"/> briefly).</summary>
    private readonly Lock _writeGate = new();
    /// <summary>Keys whose slot is being written by a put in progress.</summary>
    private readonly HashSet<ChunkKey> _writingKeys = [];

    /// <summary>Read lock held while a read uses the data file; Dispose takes it for writing before closing it.</summary>
    private readonly ReaderWriterLockSlim _lifetime = new();
    private readonly Timer? _batchTimer;
    private bool _disposed;

    private long _hits, _misses, _damaged, _puts, _evictions;

    private SlotPool(SlotPoolOptions options, FileStream? lockFile, FileStream data, FileHeaderFields header)
    {
        _options = options;
        _logger = options.Logger;
        Directory = Path.GetFullPath(options.Directory);
        _dataPath = Path.Combine(Directory, DataFileName);
        _journalPath = Path.Combine(Directory, JournalFileName);
        _snapshotPath = Path.Combine(Directory, SnapshotFileName);
        _lockFile = lockFile;
        _data = data;
        Identity = header.Identity;
        SlotBytes = header.SlotBytes;
        SlotCount = (int)header.SlotCount;
        SlotHeaderBytes = SlotPoolFormat.SlotHeaderBytes(Identity.ChunkTokens);
        PayloadCapacity = SlotBytes - SlotHeaderBytes;
        _poolId = header.PoolId;
        _writerEpoch = header.WriterEpoch;
        IsReadOnly = lockFile is null;
        _index = new SlotIndex(SlotCount);

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

    private int SlotHeaderBytes { get; }

    /// <summary>Raised (under the pool's lock; keep it short) when a read finds a damaged or rewritten slot and drops it.</summary>
    internal event Action<ChunkKey, string>? Dropped;

    /// <summary>
    /// Creates or opens the pool in <see cref="SlotPoolOptions.Directory"/>. A writer takes the
    /// directory's lock and creates the file if missing (pre-allocated for real: a full disk fails
    /// here, with the file removed). Existing files for another identity or format are refused or
    /// recreated per <see cref="SlotPoolOptions.OnMismatch"/>.
    /// </summary>
    public static SlotPool Open(SlotPoolOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        var directory = Path.GetFullPath(options.Directory);
        return options.ReadOnly ? OpenReader(options, directory) : OpenWriter(options, directory);
    }

    /// <summary>Opens whatever pool is in <paramref name="directory"/> for reading, taking its identity from the file.</summary>
    public static SlotPool OpenExisting(string directory, bool readOnly = true)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(directory);
        if (readOnly) return Open(new SlotPoolOptions { Directory = directory, ReadOnly = true });
        var header = ReadHeaderOf(Path.Combine(Path.GetFullPath(directory), DataFileName));
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

        if (!TryReserveSlot(key, out int slot, out ulong generation)) return false;
        var entry = new SlotEntry(key, slot, generation, tokens.Length, payload.Length);
        bool published = false;
        _lifetime.EnterReadLock();
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            long offset = SlotOffset(slot);
            var checksum = PayloadChecksum.ComputeAndWrite(payload, _data.SafeFileHandle, offset + SlotHeaderBytes, _parallelism,
                _options.BeforeWrite is { } hook ? position => hook(DataFileName, position) : null);
            var header = new byte[SlotHeaderBytes];
            int used = SlotHeader.Write(header, Identity, slot, generation, key, tokens, payload.Length, checksum);
            WriteData(header.AsSpan(0, AlignUp(used, 512)), offset);
            if (_options.Durability == Durability.EveryWrite) _data.SafeFileHandle.FlushToDisk();
            lock (_gate)
            {
                WritePendingTouchesLocked();
                AppendLocked(IndexJournal.PutRecord(entry));
                if (_options.Durability == Durability.EveryWrite) _journal!.FlushToDisk();
                _writingKeys.Remove(key);
                _index.Put(entry);
                _puts++;
                _dirty = _dataDirty = true;
                published = true;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new IOException($"Could not store chunk {key} in slot {slot} of {_dataPath}: {e.Message} Entries stored earlier are unaffected.", e);
        }
        finally
        {
            _lifetime.ExitReadLock();
            if (!published)
                lock (_gate)
                {
                    _writingKeys.Remove(key);
                    _index.Release(slot);
                }
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
            if (_writingKeys.Contains(key)) return false;
            if (_index.TakeFree() is int free) slot = free;
            else
            {
                if (_index.Oldest is not { } victim) return false; // every slot is being written by another thread
                // Journal the eviction first: if that fails, nothing has changed.
                try
                {
                    AppendLocked(IndexJournal.RemoveRecord(victim.Key));
                }
                catch (IOException e)
                {
                    throw new IOException($"Could not store chunk {key}: evicting the oldest entry failed to journal: {e.Message} Entries stored earlier are unaffected.", e);
                }
                _index.Remove(victim.Key);
                _evictions++;
                _dirty = true;
                slot = _index.TakeFree()!.Value;
            }
            generation = ((ulong)_writerEpoch << 32) | _nextGenerationLow++;
            _writingKeys.Add(key);
            return true;
        }
    }

    /// <summary>
    /// Copies the payload stored under <paramref name="key"/> into <paramref name="destination"/>
    /// and verifies it. False on a miss, including damaged or rewritten slots (dropped and counted).
    /// </summary>
    public bool TryGet(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination, out int payloadLength)
    {
        fixed (byte* target = destination)
            return TryGet(key, tokens, target, destination.Length, out payloadLength);
    }

    /// <summary>
    /// Like <see cref="TryGet(ChunkKey, ReadOnlySpan{int}, Span{byte}, out int)"/> into native memory
    /// (an OrtValue's buffer, pinned staging) of <paramref name="capacity"/> bytes.
    /// </summary>
    public bool TryGet(ChunkKey key, ReadOnlySpan<int> tokens, byte* destination, long capacity, out int payloadLength)
    {
        if (destination is null && capacity > 0) throw new ArgumentNullException(nameof(destination));
        return TryGet(key, tokens, PayloadScatter.Contiguous(destination, capacity), out payloadLength);
    }

    /// <summary>
    /// Like <see cref="TryGet(ChunkKey, ReadOnlySpan{int}, Span{byte}, out int)"/>, scattering the payload's runs
    /// straight into their destinations (past tensor rows) while verifying it. A payload of another
    /// length than the scatter covers is a miss.
    /// </summary>
    internal bool TryGet(ChunkKey key, ReadOnlySpan<int> tokens, PayloadScatter scatter, out int payloadLength)
    {
        payloadLength = 0;
        if (BeginRead(key, tokens, scatter) is not { } read) return false;
        ReadBlocks(read, 0, read.Blocks);
        if (!EndRead(read)) return false;
        payloadLength = (int)read.PayloadLength;
        return true;
    }

    /// <summary>
    /// Starts a verified read of the entry under <paramref name="key"/> into <paramref name="scatter"/> that
    /// may be done in steps (<see cref="ReadBlocks"/>, then <see cref="EndRead"/>, which verifies the whole
    /// payload): finds the entry and checks its slot header. Null on a miss.
    /// </summary>
    internal SlotRead? BeginRead(ChunkKey key, ReadOnlySpan<int> tokens, PayloadScatter scatter)
    {
        ThrowIfUnusable(write: false);
        SlotEntry entry;
        lock (_gate)
        {
            if (!_index.TryGet(key, out entry))
            {
                if (!IsReadOnly || !RefreshLocked() || !_index.TryGet(key, out entry))
                {
                    _misses++;
                    return null;
                }
            }
        }
        bool contiguous = scatter.IsContiguous;
        if (contiguous ? entry.PayloadLength > scatter.CopyBytes : entry.PayloadLength != scatter.Length)
            throw new ArgumentException($"The destination holds {(contiguous ? scatter.CopyBytes : scatter.Length)} bytes; the entry for {key} has {entry.PayloadLength}.", nameof(scatter));

        _lifetime.EnterReadLock();
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var failure = CheckSlot(entry, out var found, out var checksum, checkTokens: true, tokens: tokens);
            if (failure is null && (contiguous ? found.PayloadLength > scatter.CopyBytes : found.PayloadLength != scatter.Length))
                failure = $"payload of {found.PayloadLength} bytes does not match the {(contiguous ? scatter.CopyBytes : scatter.Length)}-byte destination";
            if (failure is null) return new SlotRead(entry, checksum, found.PayloadLength, scatter);
            lock (_gate) DropLocked(entry, failure);
            return null;
        }
        finally
        {
            _lifetime.ExitReadLock();
        }
    }

    /// <summary>Reads (and hashes) blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive) of a read begun by <see cref="BeginRead"/>.</summary>
    internal void ReadBlocks(SlotRead read, int firstBlock, int endBlock)
    {
        _lifetime.EnterReadLock();
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            PayloadChecksum.ReadBlocks(_data.SafeFileHandle, SlotOffset(read.Entry.Slot) + SlotHeaderBytes, read.Scatter, read.PayloadLength,
                firstBlock, endBlock, read.BlockHashes, _parallelism);
        }
        finally
        {
            _lifetime.ExitReadLock();
        }
    }

    /// <summary>Verifies a read whose every block was read: true when the bytes read are the bytes stored (a hit), else a miss that drops the entry.</summary>
    internal bool EndRead(SlotRead read)
    {
        bool intact = PayloadChecksum.Combine(read.BlockHashes) == read.Checksum;
        lock (_gate)
        {
            if (intact)
            {
                _hits++;
                TouchLocked(read.Entry.Key);
                return true;
            }
            DropLocked(read.Entry, "payload checksum mismatch (damaged, or rewritten while reading)");
            return false;
        }
    }

    /// <summary>Whether an entry is indexed for <paramref name="key"/> (its bytes are verified only when read).</summary>
    public bool Contains(ChunkKey key)
    {
        ThrowIfUnusable(write: false);
        lock (_gate) return _index.Contains(key) || (IsReadOnly && RefreshLocked() && _index.Contains(key));
    }

    /// <summary>Removes an entry; false when there was none.</summary>
    public bool Remove(ChunkKey key)
    {
        ThrowIfUnusable(write: true);
        lock (_writeGate)
        lock (_gate)
        {
            if (!_index.Remove(key)) return false;
            AppendLocked(IndexJournal.RemoveRecord(key));
            _dirty = true;
            return true;
        }
    }

    /// <summary>Removes every entry and compacts the index.</summary>
    public void Clear()
    {
        ThrowIfUnusable(write: true);
        lock (_writeGate)
        {
            lock (_gate)
            {
                _index.Clear();
                AppendLocked(IndexJournal.ClearRecord());
                _dirty = true;
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
                Hits = _hits, Misses = _misses, Damaged = _damaged, Puts = _puts, Evictions = _evictions, JournalRecords = _journalRecords,
            };
    }

    /// <summary>Reads and checks every indexed slot (header and payload checksum); drops what fails.</summary>
    public SlotPoolVerifyReport Verify()
    {
        ThrowIfUnusable(write: false);
        var clock = Stopwatch.StartNew();
        List<SlotEntry> entries;
        lock (_gate) entries = _index.Entries();
        int valid = 0, dropped = 0;
        long bytes = 0;
        _lifetime.EnterReadLock();
        try
        {
            foreach (var entry in entries)
            {
                var failure = CheckSlot(entry, out var found, out var checksum)
                    ?? (PayloadChecksum.Compute(_data.SafeFileHandle, SlotOffset(entry.Slot) + SlotHeaderBytes, found.PayloadLength, _parallelism) == checksum
                        ? null : "payload checksum mismatch");
                if (failure is null)
                {
                    valid++;
                    bytes += found.PayloadLength;
                    continue;
                }
                dropped++;
                lock (_gate) DropLocked(entry, failure);
            }
        }
        finally
        {
            _lifetime.ExitReadLock();
        }
        return new SlotPoolVerifyReport(entries.Count, valid, dropped, bytes, clock.Elapsed);
    }

    /// <summary>Makes everything written so far durable (fsync of data and journal).</summary>
    public void Flush()
    {
        ThrowIfUnusable(write: false);
        if (IsReadOnly) return;
        lock (_writeGate)
        {
            // fsync outside the index lock, so reads go on while the disk catches up.
            bool dataDirty;
            SafeFileHandle journal;
            lock (_gate)
            {
                WritePendingTouchesLocked();
                dataDirty = _dataDirty;
                _dataDirty = _dirty = false;
                journal = _journal!;
            }
            if (dataDirty) _data.Flush(flushToDisk: true);
            journal.FlushToDisk();
        }
    }

    /// <summary>
    /// Writes the index as a new snapshot (temp file, fsync, rename, directory fsync) and starts an
    /// empty journal for it. Recency is kept.
    /// </summary>
    public void Compact()
    {
        ThrowIfUnusable(write: true);
        lock (_writeGate)
        {
            _data.Flush(flushToDisk: _options.Durability != Durability.None);
            lock (_gate)
            {
                long epoch = _journalEpoch + 1;
                ulong next = ((ulong)_writerEpoch << 32) | _nextGenerationLow;
                _pendingTouches.Clear();
                WriteAtomically(_snapshotPath, IndexJournal.Snapshot(_poolId, epoch, next, _index.Entries()));
                _journal?.Dispose();
                _journal = null;
                WriteAtomically(_journalPath, IndexJournal.Header(_poolId, epoch));
                _journal = File.OpenHandle(_journalPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
                _journalEnd = JournalHeaderBytes;
                _journalEpoch = epoch;
                _journalRecords = 0;
                _dirty = false;
            }
        }
    }

    /// <summary>Flushes per the durability setting, compacts a writer's journal, unmaps and releases the lock.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _batchTimer?.Dispose();
        if (!IsReadOnly)
        {
            try
            {
                if (_journalRecords > 0 || _pendingTouches.Count > 0) Compact();
                else if (_options.Durability != Durability.None) Flush();
            }
            catch (IOException e)
            {
                _logger?.LogWarning(e, "Slot pool {Directory}: could not compact on close; the journal will be replayed on the next open.", Directory);
            }
        }
        _lifetime.EnterWriteLock();
        try
        {
            _disposed = true;
            _data.Dispose();
            lock (_gate) _journal?.Dispose();
            _lockFile?.Dispose();
        }
        finally
        {
            _lifetime.ExitWriteLock();
        }
    }

    // ---- opening ----

    private static SlotPool OpenWriter(SlotPoolOptions options, string directory)
    {
        System.IO.Directory.CreateDirectory(directory);
        var lockFile = AcquireWriterLock(directory, options.WriterLockTimeout);
        FileStream? data = null;
        try
        {
            var dataPath = Path.Combine(directory, DataFileName);
            var identity = options.Identity!;
            FileHeaderFields header;
            if (File.Exists(dataPath))
            {
                var mismatch = DescribeMismatch(dataPath, identity, out var existing);
                if (mismatch is not null && options.OnMismatch == MismatchPolicy.Refuse)
                    throw new SlotPoolMismatchException($"{dataPath}: {mismatch} Open with MismatchPolicy.Recreate to replace it, or use another directory.");
                if (mismatch is not null)
                {
                    options.Logger?.LogWarning("Slot pool {Directory}: recreating because {Mismatch}", directory, mismatch);
                    DeletePoolFiles(directory);
                }
                else
                {
                    header = existing!;
                    data = OpenData(dataPath, FileAccess.ReadWrite);
                    header = header with { WriterEpoch = header.WriterEpoch + 1 };
                    options.BeforeWrite?.Invoke(DataFileName, 0);
                    // No fsync: the epoch only makes generations distinct; integrity rests on key and checksums.
                    RandomAccess.Write(data.SafeFileHandle, FileHeader.Write(identity, header.SlotBytes, (int)header.SlotCount, header.PoolId, header.WriterEpoch), 0);
                    return Load(new SlotPool(options, lockFile, data, header));
                }
            }
            header = CreateDataFile(options, directory, identity);
            data = OpenData(dataPath, FileAccess.ReadWrite);
            return Load(new SlotPool(options, lockFile, data, header));
        }
        catch
        {
            data?.Dispose();
            lockFile.Dispose();
            throw;
        }
    }

    private static SlotPool OpenReader(SlotPoolOptions options, string directory)
    {
        var dataPath = Path.Combine(directory, DataFileName);
        if (!File.Exists(dataPath))
            throw new FileNotFoundException($"No slot pool in {directory}: {DataFileName} is missing. A writer creates it.", dataPath);
        FileHeaderFields header;
        if (options.Identity is { } identity)
        {
            var mismatch = DescribeMismatch(dataPath, identity, out var existing);
            if (mismatch is not null) throw new SlotPoolMismatchException($"{dataPath}: {mismatch} A read-only handle cannot recreate it.");
            header = existing!;
        }
        else
        {
            header = ReadHeaderOf(dataPath);
            var length = new FileInfo(dataPath).Length;
            CheckLength(dataPath, header, length);
        }
        var data = OpenData(dataPath, FileAccess.Read);
        try
        {
            return Load(new SlotPool(options, null, data, header));
        }
        catch
        {
            data.Dispose();
            throw;
        }
    }

    private static FileHeaderFields ReadHeaderOf(string dataPath)
    {
        if (!File.Exists(dataPath)) throw new FileNotFoundException($"No slot pool file {dataPath}.", dataPath);
        using var handle = File.OpenHandle(dataPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        var page = new byte[FileHeaderBytes];
        int read = RandomAccess.Read(handle, page, 0);
        var header = FileHeader.Read(page.AsSpan(0, read), dataPath);
        header.Identity.Validate();
        return header;
    }

    /// <summary>Null when the file matches; else a sentence naming the expected and found values.</summary>
    private static string? DescribeMismatch(string dataPath, SlotPoolIdentity expected, out FileHeaderFields? header)
    {
        header = null;
        FileHeaderFields found;
        try
        {
            found = ReadHeaderOf(dataPath);
        }
        catch (Exception e) when (e is SlotPoolMismatchException or ArgumentException)
        {
            return e.Message;
        }
        if (found.Identity.Fingerprint != expected.Fingerprint)
            return $"it holds KV for model fingerprint {found.Identity.Fingerprint}, not {expected.Fingerprint} (another model or other weights).";
        if (found.Identity.LayoutText != expected.LayoutText)
            return $"its layout is {found.Identity.LayoutText}, expected {expected.LayoutText}.";
        if (found.SlotBytes != expected.SlotBytes)
            return $"its slots are {found.SlotBytes} bytes, expected {expected.SlotBytes}.";
        try
        {
            CheckLength(dataPath, found, new FileInfo(dataPath).Length);
        }
        catch (SlotPoolMismatchException e)
        {
            return e.Message;
        }
        header = found;
        return null;
    }

    private static void CheckLength(string dataPath, FileHeaderFields header, long length)
    {
        if (header.SlotCount is < 1 or > int.MaxValue || header.SlotBytes < SlotPoolFormat.SlotHeaderBytes(header.Identity.ChunkTokens))
            throw new SlotPoolMismatchException($"{dataPath}: the header describes {header.SlotCount} slots of {header.SlotBytes} bytes, which is not a valid pool.");
        long expected = FileHeaderBytes + header.SlotCount * header.SlotBytes;
        if (length != expected)
            throw new SlotPoolMismatchException(
                $"{dataPath} is {length} bytes; its header describes {expected} bytes ({header.SlotCount} slots of {header.SlotBytes} bytes). " +
                "The file was truncated or extended. Delete the directory or open with MismatchPolicy.Recreate.");
    }

    private static FileHeaderFields CreateDataFile(SlotPoolOptions options, string directory, SlotPoolIdentity identity)
    {
        long slotBytes = identity.SlotBytes;
        long slots = options.CapacitySlots ?? (options.CapacityBytes is long bytes ? Math.Max(1, (bytes - FileHeaderBytes) / slotBytes) : 0);
        if (slots < 1)
            throw new ArgumentException("A new pool needs CapacityBytes or CapacitySlots.", nameof(options));
        if (slots > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(options), slots, "At most int.MaxValue slots.");
        long total = FileHeaderBytes + slots * slotBytes;
        var dataPath = Path.Combine(directory, DataFileName);
        var creating = dataPath + ".creating";
        DeletePoolFiles(directory);
        var header = new FileHeaderFields(FormatVersion, identity, slotBytes, slots, BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)), 1);
        try
        {
            // PreallocationSize reserves the blocks (posix_fallocate): a full disk fails here, not later as SIGBUS.
            using (var file = new FileStream(creating, new FileStreamOptions
            {
                Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None, PreallocationSize = total,
            }))
            {
                options.BeforeWrite?.Invoke(DataFileName, 0);
                file.SetLength(total);
                RandomAccess.Write(file.SafeFileHandle, FileHeader.Write(identity, slotBytes, (int)slots, header.PoolId, header.WriterEpoch), 0);
                file.Flush(flushToDisk: true);
            }
            File.Move(creating, dataPath);
            DirectorySync.Flush(directory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(creating);
            throw new IOException($"Could not create the slot pool file {dataPath} of {total} bytes ({slots} slots of {slotBytes} bytes): {e.Message} Free disk space or lower the capacity.", e);
        }
        return header;
    }

    private static FileStream OpenData(string path, FileAccess access) =>
        new(path, FileMode.Open, access, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);

    private static FileStream AcquireWriterLock(string directory, TimeSpan timeout)
    {
        var path = Path.Combine(directory, LockFileName);
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                // On Unix, FileShare.None takes flock(LOCK_EX); the kernel drops it when the process dies.
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
            {
                if (clock.Elapsed >= timeout)
                    throw new SlotPoolLockedException($"Another process is writing the slot pool in {directory} (it holds {path}). " +
                        "Open read-only, wait for it (SlotPoolOptions.WriterLockTimeout), or use another directory.");
                Thread.Sleep(2);
            }
        }
    }

    private static SlotPool Load(SlotPool pool)
    {
        try
        {
            if (pool.LoadIndex()) pool.Compact();
            return pool;
        }
        catch
        {
            pool.Dispose();
            throw;
        }
    }

    /// <summary>Loads snapshot and journal; true when a writer must compact (journal unusable or index rebuilt).</summary>
    private bool LoadIndex()
    {
        lock (_gate)
        {
            _index.Clear();
            var snapshot = IndexJournal.ReadFile(_snapshotPath);
            long? snapshotEpoch = snapshot is null ? 0 : IndexJournal.LoadSnapshot(snapshot, _poolId, _index);
            var journal = IndexJournal.ReadFile(_journalPath);
            long? journalEpoch = journal is null ? null : IndexJournal.ReadEpoch(journal, _poolId);
            bool rebuild = snapshotEpoch is null;
            if (rebuild)
            {
                _logger?.LogWarning("Slot pool {Directory}: the index snapshot is damaged; rebuilding the index from slot headers.", Directory);
                _index.Clear();
                RebuildFromSlotsLocked();
            }
            _journalEpoch = snapshotEpoch ?? 0;
            long validEnd = JournalHeaderBytes;
            bool journalUsable = journalEpoch is not null && journalEpoch == snapshotEpoch && !rebuild;
            if (journalUsable)
            {
                (validEnd, int records) = IndexJournal.Replay(journal, JournalHeaderBytes, _index);
                _journalRecords = records;
                if (validEnd != journal!.Length)
                    _logger?.LogWarning("Slot pool {Directory}: the journal ends in a torn or damaged record at byte {Offset} of {Length}; replayed {Records} complete records.",
                        Directory, validEnd, journal.Length, records);
            }
            _journalEnd = validEnd;
            if (IsReadOnly) return false;
            if (!journalUsable || rebuild) return true;
            _journal = File.OpenHandle(_journalPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
            if (validEnd != journal!.Length) RandomAccess.SetLength(_journal, validEnd);
            return false;
        }
    }

    /// <summary>Re-reads the journal when another process appended to or compacted it. Read-only handles only.</summary>
    private bool RefreshLocked()
    {
        var journal = IndexJournal.ReadFile(_journalPath);
        if (journal is null) return false;
        var epoch = IndexJournal.ReadEpoch(journal, _poolId);
        if (epoch is null) return false;
        if (epoch == _journalEpoch)
        {
            if (journal.Length <= _journalEnd) return false;
            (_journalEnd, int records) = IndexJournal.Replay(journal, _journalEnd, _index);
            _journalRecords += records;
            return records > 0;
        }
        _index.Clear();
        var snapshot = IndexJournal.ReadFile(_snapshotPath);
        if (snapshot is null || IndexJournal.LoadSnapshot(snapshot, _poolId, _index) != epoch) return false;
        _journalEpoch = epoch.Value;
        (_journalEnd, int replayed) = IndexJournal.Replay(journal, JournalHeaderBytes, _index);
        _journalRecords = replayed;
        return true;
    }

    private void RebuildFromSlotsLocked()
    {
        var found = new List<SlotEntry>();
        for (int slot = 0; slot < SlotCount; slot++)
            if (CheckSlot(new SlotEntry(default, slot, 0, 0, 0), out var entry, out _, anyKey: true) is null)
                found.Add(entry);
        foreach (var entry in found.OrderBy(e => e.Generation)) _index.Put(entry);
    }

    // ---- reading ----

    /// <summary>
    /// Checks the header of <paramref name="expected"/>'s slot: against its key and generation, the
    /// caller's token ids when given, or (<paramref name="anyKey"/>) only for being a valid header.
    /// </summary>
    private string? CheckSlot(SlotEntry expected, out SlotEntry found, out UInt128 checksum, bool checkTokens = false, ReadOnlySpan<int> tokens = default, bool anyKey = false)
    {
        // One copy of the header, so every check sees the same bytes.
        Span<byte> header = stackalloc byte[SlotHeaderBytes];
        PayloadSource.File(_data.SafeFileHandle, SlotOffset(expected.Slot)).Read(0, header);
        var failure = SlotHeader.Check(header, Identity, expected.Slot, anyKey ? null : expected.Generation, anyKey ? null : expected.Key,
            checkTokens, tokens, PayloadCapacity, out found, out checksum);
        if (failure is null && !anyKey && found.TokenCount != expected.TokenCount) return "token count differs from the index";
        return failure;
    }

    private void DropLocked(SlotEntry entry, string reason)
    {
        _damaged++;
        _misses++;
        if (!_index.RemoveIfSame(entry)) return;
        Dropped?.Invoke(entry.Key, reason);
        _logger?.LogWarning("Slot pool {Directory}: slot {Slot} for chunk {Key} is a miss: {Reason}. The entry was dropped.", Directory, entry.Slot, entry.Key, reason);
        if (!IsReadOnly) TryAppendLocked(IndexJournal.RemoveRecord(entry.Key));
    }

    // ---- writing ----

    private long SlotOffset(int slot) => FileHeaderBytes + slot * SlotBytes;

    private void WriteData(ReadOnlySpan<byte> bytes, long offset)
    {
        _options.BeforeWrite?.Invoke(DataFileName, offset);
        RandomAccess.Write(_data.SafeFileHandle, bytes, offset);
    }

    /// <summary>
    /// Marks an entry used. The journal record waits in <see cref="_pendingTouches"/> and goes out
    /// with the next put, flush or a full batch: a read never waits on the disk.
    /// </summary>
    private void TouchLocked(ChunkKey key)
    {
        _index.Touch(key);
        if (IsReadOnly) return;
        _pendingTouches.Add(key);
        if (_pendingTouches.Count >= MaxPendingTouches) WritePendingTouchesLocked();
    }

    private void WritePendingTouchesLocked()
    {
        if (_pendingTouches.Count == 0) return;
        var batch = _pendingTouches.SelectMany(IndexJournal.TouchRecord).ToArray();
        int count = _pendingTouches.Count;
        _pendingTouches.Clear();
        TryAppendLocked(batch, count);
    }

    private void AppendLocked(byte[] record, int records = 1)
    {
        try
        {
            _options.BeforeWrite?.Invoke(JournalFileName, _journalEnd);
            RandomAccess.Write(_journal!, record, _journalEnd);
        }
        catch (IOException)
        {
            // Cut any torn tail so later records still follow complete ones.
            try { RandomAccess.SetLength(_journal!, _journalEnd); } catch (IOException) { }
            throw;
        }
        _journalEnd += record.Length;
        _journalRecords += records;
    }

    private void TryAppendLocked(byte[] record, int records = 1)
    {
        try
        {
            AppendLocked(record, records);
        }
        catch (IOException e)
        {
            _logger?.LogWarning(e, "Slot pool {Directory}: could not journal an index change; it is kept in memory only.", Directory);
        }
    }

    private void MaybeCompact()
    {
        long records;
        int entries;
        lock (_gate) (records, entries) = (_journalRecords, _index.Count);
        if (records > 4L * entries + 4096) Compact();
    }

    private void FlushIfDirty()
    {
        try
        {
            bool dirty;
            lock (_gate) dirty = _dirty && !_disposed;
            if (dirty) Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _logger?.LogWarning(e, "Slot pool {Directory}: batched flush failed.", Directory);
        }
    }

    private void WriteAtomically(string path, byte[] bytes)
    {
        var temp = path + ".tmp";
        try
        {
            using (var file = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
            {
                _options.BeforeWrite?.Invoke(Path.GetFileName(path), 0);
                file.Write(bytes);
                file.Flush(flushToDisk: true);
            }
            File.Move(temp, path, overwrite: true);
            DirectorySync.Flush(Directory);
        }
        catch
        {
            TryDelete(temp);
            throw;
        }
    }

    private static void DeletePoolFiles(string directory)
    {
        foreach (var name in new[] { DataFileName, JournalFileName, SnapshotFileName, DataFileName + ".creating", JournalFileName + ".tmp", SnapshotFileName + ".tmp" })
            TryDelete(Path.Combine(directory, name));
    }

    private static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private void ThrowIfUnusable(bool write)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (write && IsReadOnly) throw new InvalidOperationException($"The slot pool in {Directory} is open read-only; open it without ReadOnly to write.");
    }
}

internal static class SafeFileHandleExtensions
{
    public static void FlushToDisk(this SafeFileHandle handle) => RandomAccess.FlushToDisk(handle);
}

/// <summary>A verified slot read in progress (<see cref="SlotPool.BeginRead"/>): the entry, its stored checksum, and the hash of each block read so far.</summary>
internal sealed class SlotRead(SlotEntry entry, UInt128 checksum, long payloadLength, PayloadScatter scatter)
{
    public SlotEntry Entry { get; } = entry;
    public UInt128 Checksum { get; } = checksum;
    public long PayloadLength { get; } = payloadLength;
    public PayloadScatter Scatter { get; } = scatter;
    public int Blocks { get; } = PayloadChecksum.BlockCount(payloadLength);
    public byte[] BlockHashes { get; } = new byte[PayloadChecksum.BlockCount(payloadLength) * 16];
}
