using System.Diagnostics;
using OrtKvTier.Inference;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// The one thread that touches a batch's KV: it runs every decode step (all rows that asked for their next token, in one
/// session run) and, between steps, the row work that writes a row's KV (a restore, a chunk of a prompt, a placed
/// document), one piece at a time, so a long prompt never stalls the others' decoding for more than one chunk.
/// Callers block until their piece has run; errors are rethrown on their thread.
/// </summary>
internal sealed class BatchScheduler : IDisposable
{
    private readonly BatchKvMemory _memory;
    private readonly Func<int, BatchRow?> _rowAt;
    private readonly ModelStep _step;
    private readonly object _gate = new();
    private readonly List<Piece> _decodes = [];
    private readonly Queue<Piece> _work = new();
    private readonly Thread _thread;
    private int _decodingRows;
    private bool _stopping;
    private double _lastStepMs;

    public BatchScheduler(KvModel model, BatchKvMemory memory, Func<int, BatchRow?> rowAt)
    {
        _memory = memory;
        _rowAt = rowAt;
        _step = new ModelStep(model);
        _thread = new Thread(Loop) { IsBackground = true, Name = "ortkv-batch" };
        _thread.Start();
    }

    /// <summary>Decode steps run.</summary>
    public long Steps { get; private set; }

    /// <summary>Rows decoded over all steps (their mean is the batch size reached).</summary>
    public long RowSteps { get; private set; }

    /// <summary>The most rows one step decoded.</summary>
    public int LargestStep { get; private set; }

    /// <summary>Runs <paramref name="row"/>'s <paramref name="token"/> in the next decode step; its logits land in <paramref name="logits"/>.</summary>
    public void Decode(BatchRow row, int token, float[] logits)
    {
        var piece = new Piece { Row = row, Token = token, Logits = logits };
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            if (!row.Decoding)
            {
                row.Decoding = true;
                _decodingRows++;
            }
            _decodes.Add(piece);
            Monitor.PulseAll(_gate);
        }
        Await(piece);
    }

    /// <summary>Runs <paramref name="work"/> on the batch's thread between decode steps (it may write <paramref name="row"/>'s KV).</summary>
    public void Exclusive(BatchRow row, Action work)
    {
        var piece = new Piece { Row = row, Work = work };
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            StopDecodingLocked(row);
            _work.Enqueue(piece);
            Monitor.PulseAll(_gate);
        }
        Await(piece);
    }

    /// <summary>The row will not ask for a decode step soon (done, leaving, or about to append a prompt): steps stop waiting for it.</summary>
    public void StopDecoding(BatchRow row)
    {
        lock (_gate) StopDecodingLocked(row);
    }

    private void StopDecodingLocked(BatchRow row)
    {
        if (!row.Decoding) return;
        row.Decoding = false;
        _decodingRows--;
        Monitor.PulseAll(_gate);
    }

    private void Await(Piece piece)
    {
        lock (_gate)
            while (!piece.Done) Monitor.Wait(_gate);
        if (piece.Error is { } error) throw error is ObjectDisposedException ? error : new InvalidOperationException($"The batch's run failed: {error.Message}", error);
    }

    private void Loop()
    {
        var step = new List<Piece>();
        while (true)
        {
            Piece? work = null;
            step.Clear();
            lock (_gate)
            {
                while (!_stopping && _decodes.Count == 0 && _work.Count == 0) Monitor.Wait(_gate);
                if (_stopping) return;
                GatherLocked();
                step.AddRange(_decodes);
                _decodes.Clear();
                _work.TryDequeue(out work);
            }
            if (step.Count > 0) RunStep(step);
            if (work is not null) RunWork(work);
        }
    }

    /// <summary>
    /// Waits briefly for every decoding row to ask for its step (they sample and stream between steps), so a step takes
    /// them all; a row that lags is taken in the next one.
    /// </summary>
    private void GatherLocked()
    {
        if (_decodes.Count == 0 || _decodes.Count >= _decodingRows) return;
        var window = TimeSpan.FromMilliseconds(Math.Clamp(_lastStepMs / 4, 0.2, 2));
        long start = Stopwatch.GetTimestamp();
        while (!_stopping && _decodes.Count < _decodingRows)
        {
            var left = window - Stopwatch.GetElapsedTime(start);
            if (left <= TimeSpan.Zero || !Monitor.Wait(_gate, left)) break;
        }
    }

    /// <summary>
    /// One session run over rows 0..B-1: the rows that asked run their token at their length; the others run a dummy token
    /// at their own length (a row where nothing valid lies, overwritten before it is read). B stops before a full row
    /// (no such row to spare); rows past it wait for the next step.
    /// </summary>
    private void RunStep(List<Piece> pieces)
    {
        int rows = 0;
        foreach (var p in pieces) rows = Math.Max(rows, p.Row.Slot + 1);
        var asking = new Piece?[rows];
        foreach (var p in pieces) asking[p.Row.Slot] = p;
        for (int slot = 0; slot < rows; slot++)
            if (asking[slot] is null && _rowAt(slot) is { } idle && idle.Past.Length >= _memory.Capacity)
            {
                rows = slot;
                break;
            }
        var later = pieces.Where(p => p.Row.Slot >= rows).ToList();
        if (later.Count > 0)
            lock (_gate) _decodes.InsertRange(0, later);
        if (rows == 0)
        {
            Thread.Sleep(1); // the full row is leaving
            return;
        }
        Array.Resize(ref asking, rows);

        var tokens = new int[rows];
        var positions = new int[rows];
        for (int slot = 0; slot < rows; slot++)
        {
            tokens[slot] = asking[slot]?.Token ?? 0;
            positions[slot] = _rowAt(slot)?.Past.Length ?? 0;
        }
        Exception? error = null;
        long start = Stopwatch.GetTimestamp();
        try
        {
            using var logits = _step.RunRows(_memory.Batch(rows), tokens, positions);
            for (int slot = 0; slot < rows; slot++)
                if (asking[slot] is { } p)
                {
                    p.Row.Past.Commit(1);
                    _step.CopyRow(logits, slot, p.Logits);
                }
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            error = e;
        }
        _lastStepMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        int ran = rows - asking.Count(a => a is null);
        Steps++;
        RowSteps += ran;
        LargestStep = Math.Max(LargestStep, ran);
        lock (_gate)
        {
            foreach (var p in asking)
                if (p is not null)
                {
                    p.Error = error;
                    p.Done = true;
                }
            Monitor.PulseAll(_gate);
        }
    }

    private void RunWork(Piece piece)
    {
        Exception? error = null;
        try
        {
            piece.Work!();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            error = e;
        }
        lock (_gate)
        {
            piece.Error = error;
            piece.Done = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Stops the thread; pieces not run yet fail with <see cref="ObjectDisposedException"/>.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_stopping) return;
            _stopping = true;
            Monitor.PulseAll(_gate);
        }
        _thread.Join();
        lock (_gate)
        {
            foreach (var p in _decodes.Concat(_work))
            {
                p.Error = new ObjectDisposedException(nameof(GenerationBatch), "The batch was disposed before this step ran.");
                p.Done = true;
            }
            _decodes.Clear();
            _work.Clear();
            Monitor.PulseAll(_gate);
        }
        _step.Dispose();
    }

    /// <summary>A decode request (token, logits) or a piece of row work, and how it ended.</summary>
    private sealed class Piece
    {
        public required BatchRow Row { get; init; }
        public int Token { get; init; }
        public float[] Logits { get; init; } = [];
        public Action? Work { get; init; }
        public bool Done { get; set; }
        public Exception? Error { get; set; }
    }
}
