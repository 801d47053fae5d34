using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;

namespace OrtKvTier.Storage;

/// <summary>How a pool's changes reach the disk and the other processes: the writer lock held per change, catching up with the others' journal, compaction and flushes.</summary>
public sealed unsafe partial class SlotPool
{
    /// <summary>Makes everything written so far durable (fsync of data and journal).</summary>
    public void Flush()
    {
        ThrowIfUnusable(write: false);
        if (IsReadOnly) return;
        using var hold = _file.Lock!.TryAcquire(CatchUp, TimeSpan.Zero); // without it, deferred records wait for the next change
        lock (_writeGate)
        {
            // fsync outside the index lock, so reads go on while the disk catches up.
            bool dataDirty;
            SafeFileHandle? journal;
            lock (_gate)
            {
                if (hold is not null) _log.WritePendingTouches();
                dataDirty = _dataDirty;
                _dataDirty = _log.Dirty = false;
                journal = _log.Journal;
            }
            if (dataDirty) _file.FlushToDisk();
            IndexLog.FlushToDisk(journal);
        }
    }

    /// <summary>Writes the index as a new snapshot with an empty journal, outside the index lock (records appended meanwhile follow into the new journal).</summary>
    public void Compact()
    {
        ThrowIfUnusable(write: true);
        using var hold = HoldLock();
        CompactHeld();
    }

    /// <summary>The compaction, by a thread that holds the writer lock.</summary>
    private void CompactHeld()
    {
        _needsCompaction = false;
        lock (_writeGate)
        {
            if (_options.Durability != Durability.None) _file.FlushToDisk();
            IndexLog.Compaction compaction;
            lock (_gate) compaction = _log.BeginCompaction(_index.Entries(), ((ulong)_writerEpoch << 32) | _nextGenerationLow);
            _log.WriteCompacted(compaction);
            lock (_gate) _log.FinishCompaction(compaction);
            DirectorySync.Flush(Directory); // the new journal's rename
        }
    }

    private void MaybeCompact()
    {
        bool needed;
        lock (_gate) needed = _log.NeedsCompaction(_index.Count);
        if (needed) Compact();
    }

    private void FlushIfDirty()
    {
        try
        {
            bool dirty;
            lock (_gate) dirty = _log.Dirty && !_disposed;
            if (dirty) Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _logger?.LogWarning(e, "Slot pool {Directory}: batched flush failed.", Directory);
        }
    }

    /// <summary>How long a change waits for other processes' changes; past it the change is skipped (SlotPoolLockedException).</summary>
    private static readonly TimeSpan PutLockWait = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan CloseLockWait = TimeSpan.FromMilliseconds(200);

    /// <summary>Set when catching up found the journal unusable: the next change compacts first.</summary>
    private volatile bool _needsCompaction;

    /// <summary>A hold on the writer lock for a change (the first of this process catches up with the others' changes), compacting first when catching up asked for it.</summary>
    private PoolLock.Hold HoldLock()
    {
        var hold = _file.Lock!.Acquire(CatchUp, PutLockWait > _options.WriterLockTimeout ? PutLockWait : _options.WriterLockTimeout);
        if (_needsCompaction)
            try
            {
                CompactHeld();
            }
            catch
            {
                hold.Dispose();
                throw;
            }
        return hold;
    }

    /// <summary>Under the writer lock, first of this process: replays what others journaled since; an unusable journal is rebuilt from the slot headers and compacted.</summary>
    private void CatchUp()
    {
        lock (_gate)
            if (_log.CatchUp(_index) && !_disposed)
            {
                _log.Load(_index, writer: true, created: false, () => { foreach (var entry in _file.ScanSlots()) _index.Put(entry); });
                _needsCompaction = true;
            }
    }
}
