namespace OrtKvTier.Storage;

/// <summary>The files in a pool directory belong to another model, layout, slot size or format version, or are truncated.</summary>
public sealed class SlotPoolMismatchException(string message) : IOException(message);

/// <summary>Another process holds the pool's writer lock.</summary>
public sealed class SlotPoolLockedException(string message) : IOException(message);
