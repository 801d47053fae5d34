namespace OrtKvTier.Server;

/// <summary>
/// Admission for generations: at most <paramref name="maxRunning"/> run (<see cref="ServerOptions.RunningLimit"/>) and at most
/// <see cref="ServerOptions.MaxQueued"/> wait; a request beyond that is refused at once (429), never queued without bound.
/// </summary>
public sealed class RequestQueue(ServerOptions options, int maxRunning)
{
    private readonly SemaphoreSlim _running = new(maxRunning, maxRunning);
    private int _admitted;

    /// <summary>Generations running now.</summary>
    public int Running => maxRunning - _running.CurrentCount;

    /// <summary>Requests waiting for a slot now.</summary>
    public int Queued => Math.Max(0, Volatile.Read(ref _admitted) - Running);

    /// <summary>A slot to run in (dispose it to free it), or null when the queue is full.</summary>
    public async Task<IDisposable?> EnterAsync(CancellationToken cancellationToken)
    {
        if (Interlocked.Increment(ref _admitted) > maxRunning + options.MaxQueued)
        {
            Interlocked.Decrement(ref _admitted);
            return null;
        }
        try
        {
            await _running.WaitAsync(cancellationToken);
        }
        catch
        {
            Interlocked.Decrement(ref _admitted);
            throw;
        }
        return new Slot(this);
    }

    private void Leave()
    {
        _running.Release();
        Interlocked.Decrement(ref _admitted);
    }

    private sealed class Slot(RequestQueue queue) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) queue.Leave();
        }
    }
}
