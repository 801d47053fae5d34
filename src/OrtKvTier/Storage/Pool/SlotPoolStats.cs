namespace OrtKvTier.Storage;

/// <summary>A point-in-time view of a pool.</summary>
public sealed record SlotPoolStats
{
    /// <summary>Directory.</summary>
    public required string Directory { get; init; }
    /// <summary>Identity of the stored bytes.</summary>
    public required SlotPoolIdentity Identity { get; init; }
    /// <summary>Whether this handle is read-only.</summary>
    public required bool ReadOnly { get; init; }
    /// <summary>Entries indexed.</summary>
    public required int Entries { get; init; }
    /// <summary>Slots in the file.</summary>
    public required int SlotCount { get; init; }
    /// <summary>Bytes per slot.</summary>
    public required long SlotBytes { get; init; }
    /// <summary>Size of the data file.</summary>
    public required long FileBytes { get; init; }
    /// <summary>Payload bytes held by the indexed entries.</summary>
    public required long PayloadBytes { get; init; }
    /// <summary>Successful reads since open.</summary>
    public required long Hits { get; init; }
    /// <summary>Reads that found no entry since open.</summary>
    public required long Misses { get; init; }
    /// <summary>Reads or scans that found damaged or rewritten bytes (each dropped the entry) since open.</summary>
    public required long Damaged { get; init; }
    /// <summary>Entries stored since open.</summary>
    public required long Puts { get; init; }
    /// <summary>Entries evicted to make room since open.</summary>
    public required long Evictions { get; init; }
    /// <summary>Journal records not yet compacted into the snapshot.</summary>
    public required long JournalRecords { get; init; }
    /// <summary>Journal records skipped since open because they checked out but did not fit (slot out of range, unknown kind, wrong length).</summary>
    public long SkippedRecords { get; init; }
    /// <summary>Puts since open that could not store their chunk (every slot being written, the slot reclaimed while it was written).</summary>
    public long NotStored { get; init; }
    /// <summary>Slots being written now, by any process.</summary>
    public int BeingWritten { get; init; }
    /// <summary>Times this handle took the writer lock since open, and how many of them waited for another process.</summary>
    public long LockHolds { get; init; }
    /// <summary>See <see cref="LockHolds"/>.</summary>
    public long LockWaits { get; init; }
    /// <summary>Index lookups since open (each key a restore, a read or a store asks for).</summary>
    public long IndexLookups { get; init; }
}

/// <summary>What <see cref="SlotPool.Verify"/> found.</summary>
public sealed record SlotPoolVerifyReport(int Checked, int Valid, int Dropped, long BytesVerified, TimeSpan Elapsed)
{
    /// <summary>Journal records skipped since the pool was opened because they did not fit.</summary>
    public long SkippedRecords { get; init; }
}
