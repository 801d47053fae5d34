using Microsoft.Extensions.Logging;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// How a pool's changes reach the disk and the other processes. Every change holds the writer lock only to catch up
/// with the journal and append its records (reserving a slot, publishing an entry, removing one): the payload is
/// written, and fsync runs, with no lock held. So every process stores, and a crash loses nothing acknowledged.
/// </summary>
public sealed unsafe partial class SlotPool
{
    /// <summary>How long a change waits for the other processes' changes (each holds the lock for microseconds): at least 10 s.</summary>
    private static TimeSpan ChangeLockWait(SlotPoolOptions options) => options.WriterLockTimeout > DefaultChangeWait ? options.WriterLockTimeout : DefaultChangeWait;
    private static readonly TimeSpan DefaultChangeWait = TimeSpan.FromSeconds(10);
    /// <summary>How long closing waits to journal what this process still holds (recency, drops).</summary>
    private static readonly TimeSpan CloseLockWait = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Stores <paramref name="payload"/> under <paramref name="key"/> with the chunk's token ids, evicting the least
    /// recently used entry when full. Returns false when the key is already stored (it is marked used) or being stored
    /// by another writer, and when it could not be stored (every slot being written, its slot reclaimed while it was
    /// written: counted in <see cref="SlotPoolStats.NotStored"/> and logged). Throws <see cref="IOException"/> when
    /// the write fails; earlier entries stay readable. An encoded pool takes whole chunks and stores them encoded.
    /// </summary>
    public bool Put(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        if (Codec is not { } codec) return PutStored(key, tokens, payload);
        if (payload.Length != codec.ExactBytes)
            throw new ArgumentException($"This pool stores chunks {Identity.Encoding.Name()}: it takes whole chunks of {codec.ExactBytes} bytes; got {payload.Length}.", nameof(payload));
        var encoded = System.Buffers.ArrayPool<byte>.Shared.Rent(checked((int)codec.EncodedBytes));
        try
        {
            if (codec.Encode(payload, encoded)) // on the caller's thread: the cache's writer threads
                return PutStored(key, tokens, encoded.AsSpan(0, (int)codec.EncodedBytes));
            ReportNotStored(key, $"it holds values that are not finite numbers (NaN or infinity), which {Identity.Encoding.Name()} cannot store");
            return false;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(encoded);
        }
    }

    private bool PutStored(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        ThrowIfUnusable(write: true);
        if (tokens.Length > Identity.ChunkTokens)
            throw new ArgumentException($"A chunk holds at most {Identity.ChunkTokens} tokens; got {tokens.Length}.", nameof(tokens));
        if (payload.Length > PayloadCapacity)
            throw new ArgumentException($"A slot holds at most {PayloadCapacity} payload bytes; got {payload.Length}.", nameof(payload));

        using (UseFile()) _log.Follow(); // read what others appended before taking the lock, so little is left to read under it
        SlotEntry? reserved = null;
        bool published;
        try
        {
            using (HoldForChange()) reserved = Reserve(key, tokens.Length, payload.Length);
            if (reserved is not { } entry) return false;
            using (UseFile())
            {
                _file.WriteSlot(entry, tokens, payload, _parallelism);
                if (_options.Durability == Durability.EveryWrite) _file.FlushToDisk();
                using (HoldForChange()) published = Publish(entry);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            if (reserved is { } entry) TryRelease(entry);
            throw new IOException($"Could not store chunk {key}{(reserved is { } r ? $" in slot {r.Slot}" : "")} of {_file.DataPath}: {e.Message} Entries stored earlier are unaffected.", e);
        }
        if (!published)
        {
            ReportNotStored(key, $"slot {reserved.Value.Slot} was reclaimed by another process while this one wrote it (the write took longer than {_options.ReservationTimeout.TotalSeconds:F0} s)");
            return false;
        }
        // Outside the lock: others go on while the disk catches up.
        if (_options.Durability == Durability.EveryWrite)
            using (UseFile()) _log.FlushToDisk();
        MaybeCompact();
        return true;
    }

    /// <summary>
    /// Under the writer lock, caught up: takes a slot for <paramref name="key"/> (free, one whose writer's reservation
    /// expired, or the least recently used entry's) and journals the reservation (after the eviction). Null when the key
    /// is stored or being stored, or when every slot is being written.
    /// </summary>
    private SlotEntry? Reserve(ChunkKey key, int tokenCount, long payloadLength)
    {
        if (NeedsReclaim(key)) ReclaimAbandonedReservations();
        byte[] records;
        SlotEntry entry;
        bool evicting;
        lock (_gate)
        {
            if (_index.Contains(key))
            {
                TouchLocked(key);
                return null;
            }
            if (_index.IsReserved(key)) return null;
            var victim = _index.FirstFree is null ? _index.Oldest : null;
            if ((_index.FirstFree ?? victim?.Slot) is not int slot)
            {
                ReportNotStoredLocked(key, $"all {SlotCount} slots are being written by other writers");
                return null;
            }
            entry = new SlotEntry(key, slot, ((ulong)_writerEpoch << 32) | _nextGenerationLow++, tokenCount, payloadLength);
            var reserve = _log.Codec.Reserve(key, slot, entry.Generation, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds());
            records = victim is { } v ? [.. _log.Codec.Remove(v), .. reserve] : reserve;
            evicting = victim is not null;
        }
        using (UseFile()) _log.Append(records);
        if (evicting) Interlocked.Increment(ref _evictions);
        return entry;
    }

    /// <summary>Whether a reservation might be in the way: the key is reserved, or no slot is free.</summary>
    private bool NeedsReclaim(ChunkKey key)
    {
        lock (_gate) return _index.IsReserved(key) || (_index.FirstFree is null && _index.Reservations.Count > 0);
    }

    /// <summary>
    /// Under the writer lock, caught up: releases the reservations of writers that are gone (their process died: its
    /// liveness lock is free) or that are older than <see cref="SlotPoolOptions.ReservationTimeout"/> (a stalled writer;
    /// its entry will not be published).
    /// </summary>
    private void ReclaimAbandonedReservations()
    {
        List<SlotReservation> reservations;
        lock (_gate) reservations = [.. _index.Reservations];
        long expired = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() - (long)_options.ReservationTimeout.TotalMilliseconds;
        var alive = new Dictionary<uint, bool>();
        bool Alive(uint writer) => writer == _writerEpoch || (alive.TryGetValue(writer, out bool known) ? known : alive[writer] = _file.Medium.IsAlive(LivenessFileName, writer));
        var abandoned = reservations.Where(r => r.UnixMs < expired || !Alive((uint)(r.Generation >> 32))).ToList();
        if (abandoned.Count == 0) return;
        using (UseFile()) _log.Append([.. abandoned.SelectMany(r => _log.Codec.Release(r.Slot, r.Generation))]);
        _logger?.LogDebug("Slot pool {Directory}: released {Count} slot reservations of writers that are gone.", Directory, abandoned.Count);
    }

    /// <summary>Under the writer lock, caught up: journals the entry whose slot was written, if its reservation still stands.</summary>
    private bool Publish(SlotEntry entry)
    {
        lock (_gate)
            if (_index.ReservationOf(entry.Slot) is not { } reservation || reservation.Generation != entry.Generation || reservation.Key != entry.Key) return false;
        _log.Append(_log.Codec.Put(entry));
        lock (_gate)
        {
            _puts++;
            _log.Dirty = _dataDirty = true;
        }
        return true;
    }

    /// <summary>After a failed write: lets the reservation go (if the lock comes soon; otherwise it expires).</summary>
    private void TryRelease(SlotEntry entry)
    {
        try
        {
            using var file = UseFile();
            using var hold = _lock!.TryAcquire(CloseLockWait);
            if (hold is null || !CatchUpOrRepair()) return;
            lock (_gate)
                if (_index.ReservationOf(entry.Slot)?.Generation != entry.Generation) return;
            _log.Append(_log.Codec.Release(entry.Slot, entry.Generation));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            _logger?.LogDebug(e, "Slot pool {Directory}: could not release slot {Slot}; its reservation expires.", Directory, entry.Slot);
        }
    }

    /// <summary>Removes an entry; false when there was none.</summary>
    public bool Remove(ChunkKey key)
    {
        ThrowIfUnusable(write: true);
        using var file = UseFile();
        using var hold = HoldForChange();
        SlotEntry entry;
        lock (_gate)
            if (!_index.TryGet(key, out entry)) return false;
        _log.Append(_log.Codec.Remove(entry));
        _file.Invalidate(entry.Slot); // so a rebuild from slot headers does not bring it back; before anyone can reuse the slot
        lock (_gate) _log.Dirty = _dataDirty = true;
        return true;
    }

    /// <summary>Removes every entry, frees the slots' disk space and compacts the index.</summary>
    public void Clear()
    {
        ThrowIfUnusable(write: true);
        using (UseFile())
        using (HoldForChange())
        {
            _log.Append(_log.Codec.Clear());
            _file.ZeroSlots();
            lock (_gate) _log.Dirty = _dataDirty = true;
        }
        Compact();
    }

    /// <summary>Makes everything written so far durable (fsync of data and journal), with no lock held; journals this process's pending recency first when the lock is free.</summary>
    public void Flush()
    {
        ThrowIfUnusable(write: false);
        if (IsReadOnly) return;
        using var file = UseFile();
        if (_log.HasPending)
            using (var hold = _lock!.TryAcquire(TimeSpan.Zero))
                if (hold is not null && CatchUpOrRepair()) _log.Append([]);
        bool dataDirty;
        lock (_gate)
        {
            dataDirty = _dataDirty;
            _dataDirty = _log.Dirty = false;
        }
        if (dataDirty) _file.FlushToDisk();
        _log.FlushToDisk();
    }

    /// <summary>Writes the index as a new snapshot with an empty journal (records appended meanwhile by any process follow into it). The writer lock is held only at the start and for the renames.</summary>
    public void Compact()
    {
        ThrowIfUnusable(write: true);
        if (Interlocked.Exchange(ref _compacting, 1) == 1) return; // another thread of this process is at it
        try
        {
            using var file = UseFile();
            bool durable = _options.Durability != Durability.None;
            if (durable) _file.FlushToDisk();
            _log.Compact(action =>
            {
                using (HoldForChange()) action();
            }, durable);
        }
        finally
        {
            Volatile.Write(ref _compacting, 0);
        }
    }

    private int _compacting;

    private void MaybeCompact()
    {
        if (_log.NeedsCompaction) Compact();
    }

    private void FlushIfDirty()
    {
        try
        {
            bool dirty;
            lock (_gate) dirty = (_log.Dirty || _dataDirty) && !_disposed;
            if (dirty) Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _logger?.LogWarning(e, "Slot pool {Directory}: batched flush failed.", Directory);
        }
    }

    /// <summary>On close: journals this process's pending recency and drops, compacts the journal, flushes.</summary>
    private void CloseWriter()
    {
        try
        {
            using (UseFile())
            using (var hold = _lock!.TryAcquire(CloseLockWait))
                if (hold is not null && _log.HasPending && CatchUpOrRepair()) _log.Append([]);
            // The next open then reads one snapshot instead of replaying the journal.
            if (_log.Records > 0) Compact();
            if (_options.Durability != Durability.None) Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            _logger?.LogWarning(e, "Slot pool {Directory}: could not journal recency or compact on close; the journal will be replayed on the next open.", Directory);
        }
    }

    /// <summary>A hold on the writer lock for a change, caught up with the other processes (repairing unusable index files first).</summary>
    private PoolLock.Holding HoldForChange()
    {
        if (!_warm && _options.Medium is not MemoryMedium)
        {
            LockedPathsWarmUp.Value.Wait(ChangeLockWait(_options));
            _warm = true;
        }
        var hold = _lock!.Acquire(ChangeLockWait(_options));
        try
        {
            if (!CatchUpOrRepair()) throw new SlotPoolReplacedException(Directory);
            return hold;
        }
        catch
        {
            hold.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Under the writer lock: replays what others journaled since this process last looked (cutting a dead writer's torn
    /// tail); an unusable journal is rebuilt from the slot headers and rewritten. False when the data file is no longer
    /// the one this handle opened (another process shrank or recreated the pool): this handle must not change it.
    /// </summary>
    private bool CatchUpOrRepair()
    {
        if (_file.Medium.Identify(DataFileName)?.FileId != _file.Data.FileId) return false;
        if (_log.CatchUpHeld()) return true;
        if (_log.Load(settle: false) is { } damage)
        {
            _log.Rebuild(_file.ScanSlots(), damage);
            _log.RewriteHeld();
        }
        return true;
    }

    /// <summary>Holds the writer lock of the pool in <paramref name="directory"/> as a change in progress would (tools, tests), until disposed.</summary>
    internal static IDisposable HoldWriterLock(string directory, TimeSpan timeout)
    {
        var medium = new FileMedium(directory);
        var writerLock = new PoolLock(medium.OpenLock(LockFileName), directory);
        try
        {
            var hold = writerLock.Acquire(timeout);
            return new HeldLock(medium, writerLock, hold);
        }
        catch
        {
            writerLock.Dispose();
            medium.Dispose();
            throw;
        }
    }

    private sealed class HeldLock(FileMedium medium, PoolLock writerLock, PoolLock.Holding hold) : IDisposable
    {
        public void Dispose()
        {
            hold.Dispose();
            writerLock.Dispose();
            medium.Dispose();
        }
    }

    private void ReportNotStored(ChunkKey key, string reason)
    {
        lock (_gate) ReportNotStoredLocked(key, reason);
    }

    private void ReportNotStoredLocked(ChunkKey key, string reason)
    {
        Interlocked.Increment(ref _notStored);
        NotStored?.Invoke(key, reason);
        _logger?.LogWarning("Slot pool {Directory}: chunk {Key} was not stored: {Reason}.", Directory, key, reason);
    }
}

/// <summary>Another process replaced the pool's data file (shrank or recreated it) while this handle had it open; reopen to write.</summary>
internal sealed class SlotPoolReplacedException(string directory)
    : IOException($"The slot pool in {directory} was replaced by another process (resized or recreated) while this process had it open; its writes stop here. Reopen the pool to write to it.");
