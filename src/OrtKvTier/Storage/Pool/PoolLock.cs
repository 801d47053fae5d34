using System.Diagnostics;

namespace OrtKvTier.Storage;

/// <summary>
/// A pool's writer lock: the medium's cross-process lock (an OS lock on <see cref="StoredFormats.LockFileName"/>,
/// dropped by the kernel when its holder dies), taken around the short changes of the index (reserving a slot,
/// journaling an entry, the steps of a compaction), never around a payload write or an fsync. The threads of one
/// process take turns: each hold is exclusive.
/// </summary>
internal sealed class PoolLock(IMediumLock osLock, string location) : IDisposable
{
    private readonly Lock _process = new();
    /// <summary>Holds of the thread that has the lock (a hold taken inside another of the same thread nests).</summary>
    private int _depth;

    /// <summary>Holds taken since open, and how many had to wait for another process.</summary>
    public long Holds { get; private set; }
    public long Contended { get; private set; }

    /// <summary>A hold, waiting at most <paramref name="timeout"/> for other processes; throws <see cref="SlotPoolLockedException"/> then.</summary>
    public Holding Acquire(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        if (!_process.TryEnter(timeout)) throw Locked(timeout);
        if (++_depth > 1) return new Holding(this); // nested in this thread's own hold
        try
        {
            for (int attempt = 0; !osLock.TryEnter(); attempt++)
            {
                if (attempt == 0) Contended++;
                if (clock.Elapsed >= timeout) throw Locked(timeout);
                // Holds last microseconds, unless the holder is waiting for a core: yield a few times, then sleep (1, 2, 4, 8 ms),
                // leaving the cores to the holder.
                if (attempt < 4) Thread.Yield();
                else Thread.Sleep(1 << Math.Min(3, (attempt - 4) / 4));
            }
        }
        catch
        {
            _depth--;
            _process.Exit();
            throw;
        }
        Holds++;
        return new Holding(this);
    }

    /// <summary>Like <see cref="Acquire"/>, null instead of an exception past <paramref name="timeout"/>.</summary>
    public Holding? TryAcquire(TimeSpan timeout)
    {
        try
        {
            return Acquire(timeout);
        }
        catch (SlotPoolLockedException)
        {
            return null;
        }
    }

    private SlotPoolLockedException Locked(TimeSpan timeout) =>
        new($"Another process held the slot pool's lock in {location} ({StoredFormats.LockFileName}) for longer than {timeout.TotalMilliseconds:F0} ms. " +
            "Wait longer (SlotPoolOptions.WriterLockTimeout), open read-only, or use another directory.");

    private void Release()
    {
        if (--_depth == 0) osLock.Exit();
        _process.Exit();
    }

    public void Dispose() => osLock.Dispose();

    /// <summary>One hold; disposing it lets the lock go.</summary>
    public sealed class Holding(PoolLock owner) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) owner.Release();
        }
    }
}
