using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using OrtKvTier.Keys;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// The index on its medium: an append-only journal of authenticated records (<see cref="JournalCodec"/>) that every
/// process of the pool follows and appends to, compacted into a snapshot. It keeps the in-memory
/// <see cref="SlotIndex"/> up to date:
/// <list type="bullet">
/// <item><see cref="Load"/> at open: snapshot plus journal; when either is damaged, torn or of another epoch, the index
/// is rebuilt from the slot headers instead, so every intact slot survives.</item>
/// <item><see cref="Follow"/>: reads only what other processes appended since the last read (a <c>statx</c> says whether
/// there is anything), or reloads once after another process's compaction replaced the journal. The cost of a lookup
/// that misses does not grow with the journal.</item>
/// <item><see cref="Append"/> (the caller holds the writer lock and has caught up): one positional write, no fsync.</item>
/// <item><see cref="Compact"/>: the snapshot and the new journal are written and synced with no lock held; the writer
/// lock is held only to take the index and, at the end, to carry over what was appended meanwhile and rename.</item>
/// </list>
/// Locks, in order: the pool's writer lock, then <see cref="_follow"/> (this process's reading and appending of the
/// journal), then the pool's index lock (in-memory work only). Owns the journal device.
/// </summary>
internal sealed class IndexLog : IDisposable
{
    /// <summary>How long a reader waits for a half-done change of another process (a compaction between its renames, a record being appended) before calling the files damaged.</summary>
    private static readonly TimeSpan SettleWait = TimeSpan.FromMilliseconds(10);
    private const int SettleTries = 5;
    /// <summary>Temporaries older than this belong to a process that died in the middle of a compaction.</summary>
    private static readonly TimeSpan StaleTemporary = TimeSpan.FromMinutes(10);
    private const int MaxPendingTouches = 1024;

    private readonly IStorageMedium _medium;
    private readonly DeviceAccess _access;
    private readonly long? _compactAfterRecords;
    private readonly ulong _poolId;
    private readonly JournalCodec _codec;
    private readonly ILogger? _logger;
    /// <summary>The pool's index lock: <see cref="_index"/> and the pending lists are touched only under it.</summary>
    private readonly Lock _gate;
    private readonly SlotIndex _index;
    /// <summary>Serializes this process's reads and appends of the journal: <see cref="_journal"/>, <see cref="_end"/>, <see cref="_epoch"/>.</summary>
    private readonly Lock _follow = new();
    private IStorageDevice? _journal;
    private long _end;
    private long _epoch;
    /// <summary>The journal found unusable (its id and length): not read again until it changes.</summary>
    private (ulong FileId, long Length)? _unusable;
    private readonly List<ChunkKey> _pendingTouches = [];
    /// <summary>Entries dropped on a read (damaged, rewritten): journaled with this process's next change.</summary>
    private readonly List<SlotEntry> _pendingDrops = [];

    public IndexLog(IStorageMedium medium, ulong poolId, JournalCodec codec, Lock indexGate, SlotIndex index, bool writable, ILogger? logger, long? compactAfterRecords = null)
    {
        _compactAfterRecords = compactAfterRecords;
        _medium = medium;
        _access = writable ? DeviceAccess.ReadWrite : DeviceAccess.Read;
        _poolId = poolId;
        _codec = codec;
        _gate = indexGate;
        _index = index;
        _logger = logger;
    }

    /// <summary>Encodes this pool's records.</summary>
    public JournalCodec Codec => _codec;

    /// <summary>Records in the journal (replayed or appended) since its last compaction.</summary>
    public long Records { get; private set; }

    /// <summary>Journal records skipped because they checked out but did not fit (since open).</summary>
    public long SkippedRecords { get; private set; }

    /// <summary>Entries added or removed since the last fsync (recency-only records do not count: a read never causes one).</summary>
    public bool Dirty { get; set; }

    /// <summary>Whether the journal has grown enough against the index to be worth compacting.</summary>
    public bool NeedsCompaction
    {
        get
        {
            if (_compactAfterRecords is { } limit) return Records > limit;
            int entries;
            lock (_gate) entries = _index.Count;
            return Records > 2L * entries + 1024;
        }
    }

    /// <summary>
    /// Loads snapshot and journal into the index. With <paramref name="settle"/> (no writer lock held) it waits a little
    /// for a half-done change of a writer that is alive (a compaction between its renames, a record being appended) to
    /// finish. Null when the index now mirrors the files; else what is wrong with them (damaged, torn, missing, of
    /// another epoch): then <see cref="Rebuild"/> from the slot headers, and a writer <see cref="RewriteHeld"/>.
    /// </summary>
    public string? Load(bool settle)
    {
        lock (_follow)
        {
            string? damage = null;
            for (int attempt = 0; attempt < SettleTries; attempt++)
            {
                if (attempt > 0) Thread.Sleep(SettleWait);
                if ((damage = TryLoad()) is null) return null;
                // Only a writer that is alive can be in the middle of a change: with none, the files are what they are.
                if (!settle || !_medium.AnyAlive(LivenessFileName)) break;
            }
            _unusable = _medium.Identify(JournalFileName);
            return damage;
        }
    }

    /// <summary>Replaces the index by <paramref name="entries"/> (read from the slot headers), saying why.</summary>
    public void Rebuild(IEnumerable<SlotEntry> entries, string damage)
    {
        lock (_follow)
        {
            CloseJournal();
            lock (_gate)
            {
                _index.Reset();
                foreach (var entry in entries) _index.Put(entry);
                _logger?.LogWarning("Slot pool {Directory}: {Damage}; rebuilt the index from the slot headers ({Entries} intact entries).", _medium.Location, damage, _index.Count);
            }
            Records = 0;
        }
    }

    /// <summary>One try at loading (under <see cref="_follow"/>): null when the index now mirrors the files, else what is wrong.</summary>
    private string? TryLoad()
    {
        CloseJournal();
        var snapshotBytes = ReadWhole(SnapshotFileName);
        var snapshot = snapshotBytes is null ? null : _codec.ReadSnapshot(snapshotBytes, _poolId);
        var journal = TryOpen(JournalFileName, _access);
        try
        {
            var journalBytes = journal?.ReadAll();
            long? journalEpoch = journalBytes is null ? null : _codec.ReadEpoch(journalBytes, _poolId);
            string? damage = snapshotBytes is not null && snapshot is null ? "the index snapshot is damaged"
                : journalBytes is null ? (snapshotBytes is null ? "the index snapshot and journal are missing" : "the journal is missing")
                : journalEpoch is null ? "the journal's header is damaged or another pool's"
                : journalEpoch != (snapshot?.Epoch ?? 0) ? "the journal belongs to another snapshot (a compaction was cut short)"
                : null;
            if (damage is not null) return damage;
            lock (_gate)
            {
                _index.Reset();
                foreach (var entry in snapshot?.Entries ?? []) _index.Put(entry);
            }
            _epoch = snapshot?.Epoch ?? 0;
            Records = 0;
            _unusable = null;
            _end = JournalHeaderBytes;
            ReplayLocked(journalBytes!.AsSpan(JournalHeaderBytes));
            if (_end != journalBytes!.Length && !TailIsPartial(journalBytes.AsSpan((int)_end))) return $"the journal is damaged at byte {_end} of {journalBytes.Length}";
            if (_end != journalBytes.Length) return $"the journal is torn at byte {_end} of {journalBytes.Length}";
            (_journal, journal) = (journal, null);
            return null;
        }
        finally
        {
            journal?.Dispose();
        }
    }

    /// <summary>
    /// Brings the index up to what other processes journaled: reads only the bytes appended since the last read (nothing
    /// at all when the journal's length says there is nothing new), or reloads snapshot and journal once after a
    /// compaction replaced them. True when the index changed. Never holds the index lock while reading.
    /// </summary>
    public bool Follow()
    {
        lock (_follow)
            try
            {
                return FollowLocked() == FollowResult.Changed;
            }
            catch (IOException e)
            {
                _logger?.LogDebug(e, "Slot pool {Directory}: reading the journal failed; the index stays as it was.", _medium.Location);
                return false;
            }
    }

    private enum FollowResult { Unchanged, Changed, Inconsistent }

    private FollowResult FollowLocked()
    {
        if (_medium.Identify(JournalFileName) is not { } now) return FollowResult.Inconsistent;
        if (_journal is null && now == _unusable) return FollowResult.Inconsistent; // already found unusable: not read again until it changes
        if (_journal is not null && now.FileId == _journal.FileId)
        {
            if (now.Length <= _end) return FollowResult.Unchanged;
            return ReplayLocked(_journal.ReadAll(_end)) > 0 ? FollowResult.Changed : FollowResult.Unchanged;
        }
        // Replaced (another process compacted): the new pair, once it is consistent.
        if (TryLoad() is null) return FollowResult.Changed;
        _unusable = now;
        return FollowResult.Inconsistent;
    }

    /// <summary>Applies the valid records of <paramref name="bytes"/> (the journal from <see cref="_end"/>) to the index; returns how many.</summary>
    private int ReplayLocked(ReadOnlySpan<byte> bytes)
    {
        (long end, int records, int skipped) = (_end, 0, 0);
        lock (_gate) (end, records, skipped) = _codec.Read(bytes, _end, record => _index.Apply(record));
        _end = end;
        Records += records;
        if (skipped > 0)
        {
            SkippedRecords += skipped;
            _logger?.LogWarning("Slot pool {Directory}: skipped {Skipped} journal records that check out but do not fit (slot out of range, unknown kind, wrong length).", _medium.Location, skipped);
        }
        return records;
    }

    /// <summary>
    /// Under the writer lock, before this process changes the pool: catches up with the others and cuts a torn tail a
    /// dead writer left (nobody else appends now). False when the journal is unusable (missing, damaged, its snapshot
    /// gone): the caller rebuilds the index from the slot headers and compacts.
    /// </summary>
    public bool CatchUpHeld()
    {
        lock (_follow)
        {
            if (FollowLocked() == FollowResult.Inconsistent || _journal is null) return false;
            if (_journal.Length > _end) _journal.SetLength(_end);
            return true;
        }
    }

    /// <summary>
    /// Under the writer lock, after <see cref="CatchUpHeld"/>: appends <paramref name="records"/> after the pending drops
    /// and touches, then applies them to the index (the one way a writer changes it). On failure the torn tail is cut
    /// and nothing is applied.
    /// </summary>
    public void Append(byte[] records)
    {
        lock (_follow)
        {
            var batch = TakePending();
            var bytes = batch.Length == 0 ? records : [.. batch, .. records];
            try
            {
                _journal!.Write(bytes, _end);
            }
            catch (IOException)
            {
                try { _journal!.SetLength(_end); } catch (IOException) { }
                throw;
            }
            ReplayLocked(bytes); // our own records, valid: this applies them in order
        }
    }

    /// <summary>Journals that an entry was used, with this process's next change (a read never waits on the disk). Under the index lock.</summary>
    public void Touch(ChunkKey key)
    {
        if (_pendingTouches.Count < MaxPendingTouches) _pendingTouches.Add(key); // past that, recency waits for the next change
    }

    /// <summary>Journals that an entry was dropped (a damaged or rewritten slot), with this process's next change. Under the index lock.</summary>
    public void Drop(SlotEntry entry) => _pendingDrops.Add(entry);

    /// <summary>Whether drops or touches wait to be journaled.</summary>
    public bool HasPending
    {
        get
        {
            lock (_gate) return _pendingTouches.Count > 0 || _pendingDrops.Count > 0;
        }
    }

    private byte[] TakePending()
    {
        lock (_gate)
        {
            if (_pendingTouches.Count + _pendingDrops.Count == 0) return [];
            var batch = _pendingDrops.SelectMany(_codec.Remove).Concat(_pendingTouches.SelectMany(_codec.Touch)).ToArray();
            _pendingTouches.Clear();
            _pendingDrops.Clear();
            return batch;
        }
    }

    /// <summary>fsync of the journal (outside every lock but the caller's own).</summary>
    public void FlushToDisk()
    {
        IStorageDevice? journal;
        lock (_follow) journal = _journal;
        try
        {
            journal?.Flush();
        }
        catch (ObjectDisposedException)
        {
            // replaced by a compaction meanwhile, which synced its successor
        }
    }

    /// <summary>
    /// A compaction in three steps. <paramref name="hold"/>(action) runs an action under the writer lock, caught up.
    /// 1 (held): the snapshot of the index and the reservations in flight, and where the journal stands.
    /// 2 (no lock): the snapshot and a new journal (starting with those reservations) written and synced as temporaries.
    /// 3 (held): what was appended since step 1 is copied to the new journal, the snapshot and then the journal renamed
    /// into place (no fsync under the lock; the directory is synced after). Another process's compaction in between
    /// makes this one step aside. Returns whether it replaced the files.
    /// </summary>
    public bool Compact(Action<Action> hold, bool syncData)
    {
        IndexImage image = default;
        long from = 0;
        hold(() =>
        {
            lock (_follow)
            {
                image = TakeImage(_epoch + 1);
                from = _end;
            }
        });
        bool replaced = false;
        using (var staged = new StagedIndex(_medium, _codec, _poolId, image))
            hold(() =>
            {
                lock (_follow)
                {
                    if (_epoch != image.Epoch - 1 || _journal is null) return; // another process compacted meanwhile
                    var tail = new byte[_end - from];
                    _journal.ReadFully(tail, from);
                    staged.Append(tail);
                    Install(staged, image.Epoch);
                    Records = CountRecords(tail);
                    Dirty = tail.Length > 0;
                    replaced = true;
                }
            });
        if (replaced)
        {
            _medium.Sync();
            if (syncData) FlushToDisk();
        }
        return replaced;
    }

    /// <summary>Starts an empty journal (epoch after the current one) and snapshot of the index as it is: how a writer repairs unusable index files. The caller holds the writer lock.</summary>
    public void RewriteHeld()
    {
        lock (_follow)
        {
            var image = TakeImage(Math.Max(_epoch, ReadJournalEpoch() ?? 0) + 1);
            using (var staged = new StagedIndex(_medium, _codec, _poolId, image)) Install(staged, image.Epoch);
            Records = 0;
            Dirty = false;
            _medium.Sync();
        }
    }

    /// <summary>What a new snapshot and journal start from: the index now, the reservations in flight, the epoch they will have.</summary>
    private readonly record struct IndexImage(long Epoch, byte[] Snapshot, byte[] Reservations);

    /// <summary>The image of the index for <paramref name="epoch"/> (under <see cref="_follow"/>); the pending drops and touches go (the snapshot keeps recency and has no dropped entry).</summary>
    private IndexImage TakeImage(long epoch)
    {
        lock (_gate)
        {
            _pendingTouches.Clear();
            _pendingDrops.Clear();
            return new IndexImage(epoch, _codec.Snapshot(_poolId, epoch, _index.Entries()),
                [.. _index.Reservations.SelectMany(r => _codec.Reserve(r.Key, r.Slot, r.Generation, r.UnixMs))]);
        }
    }

    /// <summary>Renames a staged snapshot and journal into place and follows the new journal (the caller holds the writer lock and <see cref="_follow"/>).</summary>
    private void Install(StagedIndex staged, long epoch)
    {
        staged.Install();
        CloseJournal();
        _journal = _medium.Open(JournalFileName, _access); // by its name now: nobody replaces it while the lock is held
        _end = staged.JournalEnd;
        _epoch = epoch;
    }

    /// <summary>
    /// A snapshot and a journal (its header, then the reservations in flight) written and synced as temporaries beside the
    /// live files, until <see cref="Install"/> renames them into place; disposing removes them if they were not installed.
    /// </summary>
    private sealed class StagedIndex : IDisposable
    {
        private readonly IStorageMedium _medium;
        private readonly string _snapshot, _journal;
        private IStorageDevice? _journalDevice;
        private bool _installed;

        public StagedIndex(IStorageMedium medium, JournalCodec codec, ulong poolId, IndexImage image)
        {
            _medium = medium;
            string suffix = $".{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}{TemporarySuffix}";
            (_snapshot, _journal) = (SnapshotFileName + suffix, JournalFileName + suffix);
            try
            {
                using (var snapshot = medium.CreateNew(_snapshot))
                {
                    snapshot.Write(image.Snapshot, 0);
                    snapshot.Flush();
                }
                _journalDevice = medium.CreateNew(_journal);
                byte[] start = [.. codec.Header(poolId, image.Epoch), .. image.Reservations];
                _journalDevice.Write(start, 0);
                _journalDevice.Flush();
                JournalEnd = start.Length;
            }
            catch
            {
                Dispose();
                throw;
            }
        }

        /// <summary>Where the staged journal's records end.</summary>
        public long JournalEnd { get; private set; }

        /// <summary>Appends records to the staged journal (no fsync: the caller syncs after the rename).</summary>
        public void Append(byte[] records)
        {
            if (records.Length == 0) return;
            _journalDevice!.Write(records, JournalEnd);
            JournalEnd += records.Length;
        }

        /// <summary>The snapshot, then the journal, renamed into place.</summary>
        public void Install()
        {
            _journalDevice!.Dispose();
            _journalDevice = null;
            _medium.Replace(_snapshot, SnapshotFileName);
            _medium.Replace(_journal, JournalFileName);
            _installed = true;
        }

        public void Dispose()
        {
            _journalDevice?.Dispose();
            if (_installed) return;
            _medium.Delete(_snapshot);
            _medium.Delete(_journal);
        }
    }

    /// <summary>Removes temporaries a process that died in the middle of a compaction or a creation left behind. The caller holds the writer lock.</summary>
    public void RemoveStaleTemporaries()
    {
        foreach (var name in _medium.Names())
            if (name.EndsWith(TemporarySuffix, StringComparison.Ordinal) && DateTime.UtcNow - (_medium.LastWrite(name) ?? DateTime.UtcNow) > StaleTemporary)
                _medium.Delete(name);
    }

    public void Dispose()
    {
        lock (_follow) CloseJournal();
    }

    private long? ReadJournalEpoch() => ReadWhole(JournalFileName) is { } bytes ? _codec.ReadEpoch(bytes, _poolId) : null;

    /// <summary>Whether the bytes after the last valid record are one record still being written (or cut short): a length that runs past the end.</summary>
    private static bool TailIsPartial(ReadOnlySpan<byte> tail) =>
        tail.Length < RecordOverhead || RecordOverhead + System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(tail) > tail.Length;

    private int CountRecords(ReadOnlySpan<byte> records) => _codec.Read(records, 0, _ => true).Records;

    private void CloseJournal()
    {
        _journal?.Dispose();
        _journal = null;
    }

    /// <summary>The device at <paramref name="name"/>, or null when there is none; a file that is there but cannot be opened (a link, not a regular file, no permission) throws, naming it.</summary>
    private IStorageDevice? TryOpen(string name, DeviceAccess access)
    {
        try
        {
            return _medium.Open(name, access);
        }
        catch (FileNotFoundException)
        {
            return null;
        }
    }

    private byte[]? ReadWhole(string name)
    {
        using var device = TryOpen(name, DeviceAccess.Read);
        return device?.ReadAll();
    }
}
