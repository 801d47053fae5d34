using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using OrtKvTier.Diagnostics;
using OrtKvTier.Keys;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// The writer threads that bring chunks down from host memory: every stored chunk to each lower tier that lacks it
/// (write-through, or on eviction for write-back), chunks read from a lower tier to the tiers above it (promotion), and
/// recency of chunks served from host memory to the local tiers below (so their eviction follows use). A capture waits
/// when <see cref="PendingBytes"/> are queued. Closing waits a bounded time for what is queued; whatever still could
/// not be written is counted and reported as not stored, never dropped silently.
/// </summary>
internal sealed class LowerTierWriter : IDisposable
{
    /// <summary>Bytes of chunks queued for the lower tiers, at most (a capture waits when it is reached).</summary>
    public const long PendingBytes = 256L << 20;

    private readonly IKvChunkTier[] _lower;
    private readonly TierFaults _faults;
    private readonly ILogger? _logger;
    /// <summary>Work: a chunk to write to the lower tiers (up to a limit), or keys to mark used there.</summary>
    private readonly BlockingCollection<(HostChunk? Chunk, int TierLimit, ChunkKey[]? Touched)> _queue;
    private readonly Thread[] _threads;
    private readonly object _pendingGate = new();
    private int _pending;
    private volatile bool _abandoning, _closed;

    public LowerTierWriter(IKvChunkTier[] lower, long chunkBytes, TierFaults faults, ILogger? logger)
    {
        _lower = lower;
        _faults = faults;
        _logger = logger;
        _queue = new(checked((int)Math.Clamp(PendingBytes / chunkBytes, 8, 256)));
        // Several writers: the disk tier writes slots in parallel, a remote tier overlaps round trips.
        _threads = Enumerable.Range(0, lower.Length == 0 ? 0 : Threads)
            .Select(i => new Thread(Run) { IsBackground = true, Name = $"ortkv-cache-writer-{i}" }).ToArray();
        foreach (var thread in _threads) thread.Start();
    }

    /// <summary>Threads writing stored chunks to the lower tiers.</summary>
    public static int Threads { get; } = Math.Clamp(Environment.ProcessorCount / 2, 2, 4);

    /// <summary>Whether there are lower tiers to write to.</summary>
    public bool HasLowerTiers => _lower.Length > 0;

    /// <summary>Chunks and touches still queued.</summary>
    public int Pending
    {
        get
        {
            lock (_pendingGate) return _pending;
        }
    }

    /// <summary>Queues <paramref name="chunk"/> (retained until written) for the lower tiers before index <paramref name="tierLimit"/>.</summary>
    public void Enqueue(HostChunk chunk, int tierLimit)
    {
        if (_closed)
        {
            NotStored(1, "the cache was closing");
            return;
        }
        lock (_pendingGate) _pending++;
        try
        {
            _queue.Add((chunk.Retain(), tierLimit, null));
        }
        catch (InvalidOperationException)
        {
            chunk.Release();
            Done();
            NotStored(1, "the cache was closing");
        }
    }

    /// <summary>Every lower tier.</summary>
    public int AllTiers => _lower.Length;

    /// <summary>A chunk read from a lower tier is also written to the lower tiers above that one.</summary>
    public void PromoteAbove(HostChunk chunk, IKvChunkTier tier)
    {
        int index = Array.IndexOf(_lower, tier);
        if (index > 0) Enqueue(chunk, index);
    }

    /// <summary>Chunks served from host memory are marked used in the tiers below by the writer threads, so their eviction follows use.</summary>
    public void TouchBelowHost(ChunkKey[] keys)
    {
        if (keys.Length == 0 || _closed || _threads.Length == 0) return;
        lock (_pendingGate) _pending++;
        bool queued;
        try
        {
            queued = _queue.TryAdd((null, 0, keys)); // full of writes: recency can wait, the request cannot
        }
        catch (InvalidOperationException)
        {
            queued = false; // closing
        }
        if (!queued) Done();
    }

    /// <summary>Waits until everything queued was written, at most <paramref name="timeout"/>; false when it ran out.</summary>
    public bool Flush(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        lock (_pendingGate)
            while (_pending > 0)
            {
                if (timeout == Timeout.InfiniteTimeSpan)
                {
                    Monitor.Wait(_pendingGate);
                    continue;
                }
                var left = timeout - clock.Elapsed;
                if (left <= TimeSpan.Zero) return false;
                Monitor.Wait(_pendingGate, left);
            }
        return true;
    }

    /// <summary>
    /// Waits at most <paramref name="timeout"/> for the queued writes, then stops the threads: chunks still queued are
    /// not written, and are counted and reported as not stored.
    /// </summary>
    public void Close(TimeSpan timeout)
    {
        if (_closed) return;
        if (!Flush(timeout))
        {
            _abandoning = true;
            _logger?.LogWarning("Prefix cache: {Pending} chunks were still queued for the lower tiers after {Seconds:F0} s (CloseTimeout); they are not stored.", Pending, timeout.TotalSeconds);
        }
        _closed = true;
        _queue.CompleteAdding();
        foreach (var thread in _threads) thread.Join();
    }

    public void Dispose()
    {
        Close(TimeSpan.Zero);
        _queue.Dispose();
    }

    private void Run()
    {
        foreach (var (chunk, limit, touched) in _queue.GetConsumingEnumerable())
        {
            if (chunk is null)
            {
                if (!_abandoning) Touch(touched!);
                Done();
                continue;
            }
            try
            {
                if (_abandoning) NotStored(1, $"the cache closed before it was written (CloseTimeout)");
                else Write(chunk, limit);
            }
            catch (Exception e)
            {
                _faults.Report(TierId.Disk, "not-stored", $"writing a chunk to the lower tiers failed ({e.Message}); it stays in memory only.", e);
                _logger?.LogDebug(e, "Prefix cache: writing chunk {Key} to the lower tiers failed.", chunk.Key);
            }
            finally
            {
                chunk.Release();
                Done();
            }
        }
    }

    private void Write(HostChunk chunk, int limit)
    {
        for (int t = 0; t < limit; t++)
        {
            var tier = _lower[t];
            if (!tier.Contains(chunk.Key) && tier.Write(chunk.Key, chunk.Tokens, chunk.Bytes))
                KvCacheMetrics.BytesWritten.Add(chunk.Length, KvCacheMetrics.Tier(tier.Id.Name));
        }
    }

    private void Touch(ChunkKey[] keys)
    {
        foreach (var tier in _lower)
            try
            {
                tier.Touch(keys);
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
            {
                _faults.Report(tier.Id, "touch", $"marking entries used failed ({e.Message}); eviction order may lag.", e);
            }
    }

    private void NotStored(int chunks, string why)
    {
        foreach (var tier in _lower.Take(1))
            _faults.Report(tier.Id, "not-stored", $"{chunks} chunk(s) were not written to the lower tiers: {why}.");
    }

    private void Done()
    {
        lock (_pendingGate)
        {
            _pending--;
            Monitor.PulseAll(_pendingGate);
        }
    }
}
