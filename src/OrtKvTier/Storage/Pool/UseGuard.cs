namespace OrtKvTier.Storage;

/// <summary>
/// Keeps a resource open while it is in use: any number of users <see cref="Enter"/> at once, and
/// <see cref="Close"/> waits for them to leave before it releases the resource; later users get an
/// <see cref="ObjectDisposedException"/>.
/// </summary>
internal sealed class UseGuard(string owner)
{
    private readonly ReaderWriterLockSlim _lock = new();
    private bool _closed;

    public bool IsClosed => Volatile.Read(ref _closed);

    /// <summary>A use, ended by disposing it; throws when closed.</summary>
    public Use Enter()
    {
        _lock.EnterReadLock();
        if (!_closed) return new Use(_lock);
        _lock.ExitReadLock();
        throw new ObjectDisposedException(owner);
    }

    /// <summary>Waits for every use to end, then runs <paramref name="release"/> once.</summary>
    public void Close(Action release)
    {
        _lock.EnterWriteLock();
        try
        {
            if (_closed) return;
            _closed = true;
            release();
        }
        finally
        {
            _lock.ExitWriteLock();
        }
    }

    public readonly struct Use(ReaderWriterLockSlim held) : IDisposable
    {
        public void Dispose() => held.ExitReadLock();
    }
}
