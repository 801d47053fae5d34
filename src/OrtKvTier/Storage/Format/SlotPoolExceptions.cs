namespace OrtKvTier.Storage;

/// <summary>The files in a pool directory belong to another model, layout, slot size or format version, or are truncated.</summary>
internal sealed class SlotPoolMismatchException(string message) : IOException(message)
{
    /// <summary>The format version the files have, when that is what does not match.</summary>
    public uint? FoundVersion { get; init; }
}

/// <summary>Another process holds the pool's writer lock.</summary>
internal sealed class SlotPoolLockedException(string message) : IOException(message);
