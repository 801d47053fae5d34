namespace OrtKvTier.Tensors;

/// <summary>
/// Where a payload's bytes go when read: consecutive runs of <see cref="RunBytes"/>, run i to
/// <see cref="Target"/>(i); only the first <see cref="CopyBytes"/> of each run are copied (the rest
/// is verified in place). A contiguous destination is one run. It holds raw addresses: valid only while
/// the memory it points into (past tensors, staging, a pinned span) is alive and not moved.
/// </summary>
internal readonly unsafe struct PayloadScatter
{
    private readonly nint[] _targets;

    public PayloadScatter(nint[] targets, long runBytes, long copyBytes) : this(targets, runBytes, copyBytes, contiguous: false) { }

    private PayloadScatter(nint[] targets, long runBytes, long copyBytes, bool contiguous)
    {
        ArgumentNullException.ThrowIfNull(targets);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(runBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(copyBytes);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(copyBytes, runBytes);
        _targets = targets;
        RunBytes = runBytes;
        CopyBytes = copyBytes;
        IsContiguous = contiguous;
    }

    /// <summary>One destination of <paramref name="capacity"/> bytes that takes a payload of up to that length.</summary>
    public static PayloadScatter Contiguous(byte* destination, long capacity) => new([(nint)destination], Math.Max(1, capacity), capacity, contiguous: true);

    public bool IsContiguous { get; }

    public long RunBytes { get; }
    public long CopyBytes { get; }

    /// <summary>Bytes of payload the runs cover.</summary>
    public long Length => _targets.Length * RunBytes;

    public byte* Target(int run) => (byte*)_targets[run];

    /// <summary>Copies <paramref name="size"/> payload bytes that start at payload offset <paramref name="start"/>, held at <paramref name="source"/>, to their destinations.</summary>
    public void Place(byte* source, long start, long size)
    {
        if (IsContiguous)
        {
            long copy = Math.Min(start + size, CopyBytes) - start;
            if (copy > 0) Buffer.MemoryCopy(source, Target(0) + start, copy, copy);
            return;
        }
        for (long position = start, end = start + size; position < end;)
        {
            int run = (int)(position / RunBytes);
            long runStart = (long)run * RunBytes;
            long runEnd = Math.Min(end, runStart + RunBytes);
            long copyEnd = Math.Min(runEnd, runStart + CopyBytes);
            if (position < copyEnd && Target(run) is var target && target is not null)
                Buffer.MemoryCopy(source + (position - start), target + (position - runStart), copyEnd - position, copyEnd - position);
            position = runEnd;
        }
    }
}
