using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// Continuous batching for one model: sequences <see cref="Join"/> it as <see cref="KvGenerator"/>s (each restored from
/// the cache tiers into its own row, as alone) and leave when disposed; their decode steps run together, one session run
/// for every row that asked, on the batch's thread. A prompt runs in pieces of
/// <see cref="GenerationBatchOptions.MaxPrefillTokensPerStep"/> between steps, one prompt at a time, so sequences that share
/// a prefix compute it once (the next one restores what the first stored). Each sequence's tokens are those it gets alone.
/// The KV lives in host memory reserved up front and is bounded by <see cref="GenerationBatchOptions.MaxKvBytes"/>: a
/// sequence waits in line until its row and its tokens are free. Thread-safe: one thread per sequence.
/// </summary>
public sealed class GenerationBatch : IDisposable
{
    private readonly object _admission = new();
    private readonly LinkedList<object> _line = new();
    private readonly BatchRow?[] _rows;
    private readonly BatchKvMemory _memory;
    private readonly SemaphoreSlim _promptTurn = new(1, 1);
    private int _activeRows;
    private int _reservedTokens;
    private bool _disposed;

    /// <summary>A batch over <paramref name="model"/> (its KV in host memory: a model on a device is refused).</summary>
    /// <exception cref="NotSupportedException">The model runs on a device.</exception>
    public GenerationBatch(KvModel model, GenerationBatchOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        options ??= new GenerationBatchOptions();
        options.Validate();
        if (model.EpDevice is not null)
            throw new NotSupportedException($"Batching keeps the KV in host memory; {model.Folder} runs on {model.EpDevice.EpName}. Run one generator per sequence on the device.");
        Model = model;
        Options = options;
        MaxKvTokens = (int)Math.Min(int.MaxValue, options.MaxKvBytes / model.Layout.BytesPerToken);
        if (MaxKvTokens < 1)
            throw new ArgumentException($"MaxKvBytes ({options.MaxKvBytes}) holds no token of {model.Folder}'s KV ({model.Layout.BytesPerToken} bytes per token).", nameof(options));
        _rows = new BatchRow?[options.MaxRows];
        // No row grows past the model's length or the whole batch's memory.
        _memory = new BatchKvMemory(model.Layout, options.MaxRows, Math.Min(model.Layout.MaxLength, MaxKvTokens));
        Scheduler = new BatchScheduler(model, _memory, slot => _rows[slot]);
    }

    /// <summary>The model the sequences run.</summary>
    public KvModel Model { get; }

    /// <summary>The options in force.</summary>
    public GenerationBatchOptions Options { get; }

    /// <summary>Tokens of KV the batch holds at most, over all its sequences (<see cref="GenerationBatchOptions.MaxKvBytes"/>).</summary>
    public int MaxKvTokens { get; }

    /// <summary>Sequences in the batch now.</summary>
    public int ActiveRows => Volatile.Read(ref _activeRows);

    /// <summary>Tokens of KV reserved by the sequences in the batch now.</summary>
    public int ReservedTokens => Volatile.Read(ref _reservedTokens);

    /// <summary>Sequences waiting for a row or for KV memory now.</summary>
    public int Waiting
    {
        get
        {
            lock (_admission) return _line.Count;
        }
    }

    /// <summary>Decode steps run so far.</summary>
    public long DecodeSteps => Scheduler.Steps;

    /// <summary>The mean rows a decode step ran (0 before the first).</summary>
    public double MeanRowsPerStep => Scheduler.Steps == 0 ? 0 : (double)Scheduler.RowSteps / Scheduler.Steps;

    /// <summary>The most rows one decode step ran.</summary>
    public int LargestStep => Scheduler.LargestStep;

    internal BatchScheduler Scheduler { get; }

    /// <summary>
    /// A generator in this batch, once a row and <see cref="SearchOptions.MaxLength"/> tokens of KV are free (sequences are
    /// let in in the order they asked). Dispose it to leave. Its <see cref="KvGenerator.AppendTokens"/> waits for the
    /// batch's prompt turn; <paramref name="cancellationToken"/> stops that wait and this one.
    /// </summary>
    /// <exception cref="ArgumentException">The sequence needs more KV than the whole batch may hold.</exception>
    /// <exception cref="OperationCanceledException"><paramref name="cancellationToken"/> was cancelled while waiting.</exception>
    public KvGenerator Join(SearchOptions? search = null, PrefixCache? cache = null, string? tenant = null, CancellationToken cancellationToken = default)
    {
        search ??= SearchOptions.FromConfig(Model);
        search.Validate(Model);
        int need = search.MaxLength;
        if (need > MaxKvTokens)
            throw new ArgumentException(
                $"The sequence may grow to {need} tokens ({(long)need * Model.Layout.BytesPerToken >> 20} MiB of KV); the batch holds at most {MaxKvTokens} tokens " +
                $"(MaxKvBytes {Options.MaxKvBytes >> 20} MiB). Ask for fewer tokens or raise GenerationBatchOptions.MaxKvBytes.", nameof(search));
        BatchRow row;
        // Registered outside the lock: disposing a registration waits for a callback running now, which takes the lock.
        using var wake = cancellationToken.Register(() =>
        {
            lock (_admission) Monitor.PulseAll(_admission);
        });
        lock (_admission)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var ticket = _line.AddLast(new object());
            try
            {
                while (_line.First != ticket || _activeRows == _rows.Length || _reservedTokens + need > MaxKvTokens)
                {
                    cancellationToken.ThrowIfCancellationRequested();
                    ObjectDisposedException.ThrowIf(_disposed, this);
                    Monitor.Wait(_admission);
                }
                cancellationToken.ThrowIfCancellationRequested();
            }
            finally
            {
                _line.Remove(ticket);
                Monitor.PulseAll(_admission);
            }
            row = new BatchRow(this, need, PastKeyValues.Unplaced(Model.Layout), cancellationToken);
            _activeRows++;
            _reservedTokens += need;
        }
        try
        {
            return new KvGenerator(Model, search, cache, tenant, row);
        }
        catch
        {
            row.Leave();
            throw;
        }
    }

    internal IDisposable EnterPromptTurn(CancellationToken cancellationToken)
    {
        _promptTurn.Wait(cancellationToken);
        return new PromptTurn(_promptTurn);
    }

    /// <summary>Gives <paramref name="row"/> the lowest free slot (there is one: no more rows joined than there are slots).</summary>
    internal void Place(BatchRow row)
    {
        lock (_admission)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int slot = Array.IndexOf(_rows, null);
            row.PlaceAt(slot, _memory.RowPast(slot));
            _rows[slot] = row;
        }
    }

    internal void Leave(BatchRow row)
    {
        row.Past.Dispose();
        lock (_admission)
        {
            if (row.Slot >= 0)
            {
                _rows[row.Slot] = null;
                if (!_disposed) _memory.Release(row.Slot);
            }
            _activeRows--;
            _reservedTokens -= row.ReservedTokens;
            if (_disposed && _activeRows == 0) _memory.Dispose();
            Monitor.PulseAll(_admission);
        }
    }

    /// <summary>Stops the batch: waiting sequences and steps not run yet fail with <see cref="ObjectDisposedException"/>. The KV memory is freed once the last generator has left.</summary>
    public void Dispose()
    {
        lock (_admission)
        {
            if (_disposed) return;
            _disposed = true;
            Monitor.PulseAll(_admission);
        }
        Scheduler.Dispose();
        lock (_admission)
            if (_activeRows == 0) _memory.Dispose();
    }

    private sealed class PromptTurn(SemaphoreSlim turn) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) turn.Release();
        }
    }
}
