using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using OrtKvTier.Keys;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// The index on disk: an append-only journal of checksummed records (<see cref="IndexJournal"/> encodes them)
/// compacted into a snapshot. Loads the in-memory <see cref="SlotIndex"/> (replaying what is valid, asking for
/// a rebuild from slot headers when the snapshot is damaged), refreshes a reader's copy when another process
/// appended or compacted, and appends a writer's changes. Every member but <see cref="WriteCompacted"/> and
/// <see cref="FlushToDisk"/> runs under the pool's index lock; those two do the slow file work (fsync) outside it.
/// Owns the journal handle: <see cref="Dispose"/> closes it.
/// </summary>
internal sealed class IndexLog(string directory, ulong poolId, IndexJournal codec, Action<string, long>? beforeWrite, ILogger? logger) : IDisposable
{
    /// <summary>Encodes and checks this pool's journal records and snapshots.</summary>
    public IndexJournal Codec => codec;

    private const int MaxPendingTouches = 1024;

    private readonly string _journalPath = Path.Combine(directory, JournalFileName);
    private readonly string _snapshotPath = Path.Combine(directory, SnapshotFileName);
    private readonly List<ChunkKey> _pendingTouches = [];
    /// <summary>Entries dropped on a read (damaged, rewritten): journaled with the next change, under the writer lock.</summary>
    private readonly List<ChunkKey> _pendingRemoves = [];
    private SafeFileHandle? _journal;
    private long _journalEnd;
    private long _epoch;

    /// <summary>Records in the journal (replayed or appended) since its last compaction.</summary>
    public long Records { get; private set; }

    /// <summary>Whether entries were added or removed since the last fsync (recency-only records do not count: a read never causes one).</summary>
    public bool Dirty { get; set; }

    /// <summary>Whether the journal has grown enough against <paramref name="entries"/> to be worth compacting.</summary>
    public bool NeedsCompaction(int entries) => Records > 4L * entries + 4096;

    /// <summary>Journal records skipped because they checked out but did not fit (since open).</summary>
    public long SkippedRecords { get; private set; }

    /// <summary>
    /// Loads snapshot and journal into <paramref name="index"/>. When either is damaged, torn, missing or of another
    /// epoch (a crash, a lost file), the index is rebuilt from the slot headers instead by <paramref name="rebuild"/>,
    /// so every intact slot survives. A pool created just now (<paramref name="created"/>) has nothing to rebuild.
    /// True when a writer must compact (the index was rebuilt or the journal is unusable).
    /// </summary>
    public bool Load(SlotIndex index, bool writer, bool created, Action rebuild)
    {
        index.Clear();
        var snapshot = IndexJournal.ReadFile(_snapshotPath);
        long? snapshotEpoch = snapshot is null ? 0 : codec.LoadSnapshot(snapshot, poolId, index);
        var journal = IndexJournal.ReadFile(_journalPath);
        long? journalEpoch = journal is null ? null : codec.ReadEpoch(journal, poolId);
        long validEnd = JournalHeaderBytes;
        string? damage = snapshotEpoch is null ? "the index snapshot is damaged"
            : journal is null ? (snapshot is null && !created ? "the index snapshot and journal are missing" : null)
            : journalEpoch is null ? "the journal's header is damaged or another pool's"
            : journalEpoch != snapshotEpoch ? "the journal belongs to another snapshot (a compaction was cut short)"
            : null;
        if (damage is null && journal is not null)
        {
            (validEnd, int records, int skipped) = codec.Replay(journal, JournalHeaderBytes, index);
            Records = records;
            ReportSkipped(skipped);
            if (validEnd != journal.Length) damage = $"the journal is torn or damaged at byte {validEnd} of {journal.Length}";
        }
        _epoch = snapshotEpoch ?? 0;
        _journalEnd = validEnd;
        if (damage is not null)
        {
            index.Clear();
            rebuild();
            logger?.LogWarning("Slot pool {Directory}: {Damage}; rebuilt the index from the slot headers ({Entries} intact entries).", directory, damage, index.Count);
        }
        if (!writer) return false;
        if (damage is not null || journal is null) return true;
        _journal = File.OpenHandle(_journalPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        return false;
    }

    private void ReportSkipped(int skipped)
    {
        if (skipped == 0) return;
        SkippedRecords += skipped;
        logger?.LogWarning("Slot pool {Directory}: skipped {Skipped} journal records that check out but do not fit (slot out of range, unknown kind, wrong length).", directory, skipped);
    }

    /// <summary>Re-reads the journal when another process appended to or compacted it; true when <paramref name="index"/> changed.</summary>
    public bool Refresh(SlotIndex index)
    {
        var journal = IndexJournal.ReadFile(_journalPath);
        if (journal is null || codec.ReadEpoch(journal, poolId) is not { } epoch) return false;
        return Follow(journal, epoch, index) == true;
    }

    /// <summary>
    /// Before this process changes the pool, under the writer lock: replays what other processes journaled since
    /// (or reloads after their compaction), reopens the journal they may have replaced, and cuts a torn tail a dead
    /// writer left (nobody else appends now). True when the journal is unusable and a compaction must rewrite it.
    /// </summary>
    public bool CatchUp(SlotIndex index)
    {
        var journal = IndexJournal.ReadFile(_journalPath);
        if (journal is null || codec.ReadEpoch(journal, poolId) is not { } epoch || Follow(journal, epoch, index) is null) return true;
        _journal?.Dispose();
        _journal = null;
        _journal = File.OpenHandle(_journalPath, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        if (RandomAccess.GetLength(_journal) > _journalEnd) RandomAccess.SetLength(_journal, _journalEnd);
        return false;
    }

    /// <summary>Brings <paramref name="index"/> up to <paramref name="journal"/> (of <paramref name="epoch"/>): whether it changed, or null when the journal's snapshot cannot be loaded.</summary>
    private bool? Follow(byte[] journal, long epoch, SlotIndex index)
    {
        if (epoch == _epoch)
        {
            if (journal.Length <= _journalEnd) return false;
            (_journalEnd, int records, int skipped) = codec.Replay(journal, _journalEnd, index);
            Records += records;
            ReportSkipped(skipped);
            return records > 0;
        }
        index.Clear();
        var snapshot = IndexJournal.ReadFile(_snapshotPath);
        if (snapshot is null || codec.LoadSnapshot(snapshot, poolId, index) != epoch) return null;
        _epoch = epoch;
        (_journalEnd, int replayed, int dropped) = codec.Replay(journal, JournalHeaderBytes, index);
        Records = replayed;
        ReportSkipped(dropped);
        return true;
    }

    /// <summary>Appends records; on failure cuts any torn tail (so later records still follow complete ones) and throws.</summary>
    public void Append(byte[] record, int records = 1)
    {
        try
        {
            beforeWrite?.Invoke(JournalFileName, _journalEnd);
            RandomAccess.Write(_journal!, record, _journalEnd);
        }
        catch (IOException)
        {
            try { RandomAccess.SetLength(_journal!, _journalEnd); } catch (IOException) { }
            throw;
        }
        _journalEnd += record.Length;
        Records += records;
    }

    /// <summary>Like <see cref="Append"/>; a failure is logged and the change kept in memory only.</summary>
    public void TryAppend(byte[] record, int records = 1)
    {
        try
        {
            Append(record, records);
        }
        catch (IOException e)
        {
            logger?.LogWarning(e, "Slot pool {Directory}: could not journal an index change; it is kept in memory only.", directory);
        }
    }

    /// <summary>Journals that an entry was used: the record waits for the next put, flush or a full batch, so a read never waits on the disk.</summary>
    public void Touch(ChunkKey key)
    {
        if (_pendingTouches.Count < MaxPendingTouches) _pendingTouches.Add(key); // past that, recency waits for the next change
    }

    /// <summary>Journals that an entry was dropped, with the next change this process makes under the writer lock.</summary>
    public void DeferRemove(ChunkKey key) => _pendingRemoves.Add(key);

    public bool HasPendingTouches => _pendingTouches.Count > 0 || _pendingRemoves.Count > 0;

    /// <summary>Appends the deferred removes and touches (the caller holds the writer lock).</summary>
    public void WritePendingTouches()
    {
        if (!HasPendingTouches) return;
        var batch = _pendingRemoves.SelectMany(codec.RemoveRecord).Concat(_pendingTouches.SelectMany(codec.TouchRecord)).ToArray();
        int count = _pendingTouches.Count + _pendingRemoves.Count;
        _pendingTouches.Clear();
        _pendingRemoves.Clear();
        TryAppend(batch, count);
    }

    /// <summary>The journal to fsync (taken under the lock, synced outside it by <see cref="FlushToDisk"/>).</summary>
    public SafeFileHandle? Journal => _journal;

    /// <summary>fsync of a journal handle taken from <see cref="Journal"/>.</summary>
    public static void FlushToDisk(SafeFileHandle? journal)
    {
        if (journal is not null) RandomAccess.FlushToDisk(journal);
    }

    /// <summary>A compaction between its steps: the snapshot's bytes and epoch, and where the journal stood when it was taken.</summary>
    public sealed class Compaction(long epoch, byte[] snapshot, long journalFrom, long recordsFrom)
    {
        public long Epoch { get; } = epoch;
        public byte[] Snapshot { get; } = snapshot;
        public long JournalFrom { get; } = journalFrom;
        public long RecordsFrom { get; } = recordsFrom;
        public string NewJournal { get; set; } = "";
    }

    /// <summary>Step 1, under the lock: the snapshot of <paramref name="entries"/> (least recently used first).</summary>
    public Compaction BeginCompaction(IReadOnlyList<SlotEntry> entries, ulong nextGeneration)
    {
        _pendingTouches.Clear(); // the snapshot keeps recency, and has no dropped entry
        _pendingRemoves.Clear();
        long epoch = _epoch + 1;
        return new Compaction(epoch, codec.Snapshot(poolId, epoch, nextGeneration, entries), _journalEnd, Records);
    }

    /// <summary>
    /// Step 2, outside the lock (writers are kept out by the pool): a new journal is written beside the old one
    /// and synced, then the snapshot replaces the old one (temp file, fsync, rename, directory fsync).
    /// </summary>
    public void WriteCompacted(Compaction compaction)
    {
        compaction.NewJournal = _journalPath + ".tmp";
        WriteSynced(compaction.NewJournal, codec.Header(poolId, compaction.Epoch));
        try
        {
            WriteSynced(_snapshotPath + ".tmp", compaction.Snapshot);
            File.Move(_snapshotPath + ".tmp", _snapshotPath, overwrite: true);
            DirectorySync.Flush(directory);
        }
        catch
        {
            SlotFile.TryDelete(compaction.NewJournal);
            SlotFile.TryDelete(_snapshotPath + ".tmp");
            throw;
        }
    }

    /// <summary>
    /// Step 3, under the lock: records appended since step 1 are copied to the new journal, which replaces the old
    /// one (a rename; the directory is synced on the next flush or compaction).
    /// </summary>
    public void FinishCompaction(Compaction compaction)
    {
        byte[] tail = [];
        if (_journal is not null && _journalEnd > compaction.JournalFrom)
        {
            tail = new byte[_journalEnd - compaction.JournalFrom];
            RandomAccess.Read(_journal, tail, compaction.JournalFrom);
        }
        var journal = File.OpenHandle(compaction.NewJournal, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite | FileShare.Delete);
        try
        {
            if (tail.Length > 0) RandomAccess.Write(journal, tail, JournalHeaderBytes);
            File.Move(compaction.NewJournal, _journalPath, overwrite: true);
        }
        catch
        {
            journal.Dispose();
            SlotFile.TryDelete(compaction.NewJournal);
            throw;
        }
        _journal?.Dispose();
        _journal = journal;
        _journalEnd = JournalHeaderBytes + tail.Length;
        _epoch = compaction.Epoch;
        Records -= compaction.RecordsFrom;
        Dirty = tail.Length > 0;
    }

    public void Dispose() => _journal?.Dispose();

    private void WriteSynced(string path, byte[] bytes)
    {
        try
        {
            using var file = PoolFiles.CreateFresh(path);
            beforeWrite?.Invoke(Path.GetFileName(path[..^".tmp".Length]), 0);
            file.Write(bytes);
            file.Flush(flushToDisk: true);
        }
        catch
        {
            SlotFile.TryDelete(path);
            throw;
        }
    }

}
