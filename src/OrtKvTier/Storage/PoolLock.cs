namespace OrtKvTier.Storage;

/// <summary>
/// A pool directory's writer lock: an OS lock on <see cref="StoredFormats.LockFileName"/> (dropped by the kernel if
/// the process dies) that a process holds only while it changes the pool, so every process can store. The
/// threads of one process share one hold (counted); the first takes the OS lock and catches up with what other
/// processes changed since, the last lets it go.
/// </summary>
internal sealed class PoolLock(string directory, TimeSpan wait)
{
    private readonly Lock _gate = new();
    private int _holds;
    private FileStream? _file;

    /// <summary>
    /// A hold on the lock, waiting at most <paramref name="timeout"/> (default: the pool's wait) for other
    /// processes; when this process did not hold it yet, <paramref name="catchUp"/> runs first. Throws
    /// <see cref="SlotPoolLockedException"/> on timeout.
    /// </summary>
    public Hold Acquire(Action catchUp, TimeSpan? timeout = null)
    {
        lock (_gate)
        {
            if (_holds == 0)
            {
                _file = SlotFile.AcquireWriterLock(directory, timeout ?? wait);
                try
                {
                    catchUp();
                }
                catch
                {
                    _file.Dispose();
                    _file = null;
                    throw;
                }
            }
            _holds++;
        }
        return new Hold(this);
    }

    /// <summary>Like <see cref="Acquire"/>, null instead of an exception when another process holds it past <paramref name="timeout"/>.</summary>
    public Hold? TryAcquire(Action catchUp, TimeSpan timeout)
    {
        try
        {
            return Acquire(catchUp, timeout);
        }
        catch (SlotPoolLockedException)
        {
            return null;
        }
    }

    private void Release()
    {
        lock (_gate)
            if (--_holds == 0)
            {
                _file!.Dispose();
                _file = null;
            }
    }

    /// <summary>One hold; disposing it lets the lock go once every hold of this process is gone.</summary>
    public sealed class Hold(PoolLock owner) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) owner.Release();
        }
    }
}
