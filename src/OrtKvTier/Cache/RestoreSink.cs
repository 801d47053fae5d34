using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Tensors;

namespace OrtKvTier.Cache;

/// <summary>
/// Where a restore puts the chunks it reads, and the one place that prepares the past (the caller's
/// <c>preparePast</c>(rows), which makes the past hold exactly that many rows, written from row 0): the host past
/// itself (<see cref="HostRestoreSink"/>), or pinned staging copied to a device past as its tensors fill
/// (<see cref="DeviceRestoreSink"/>). One restore attempt: <see cref="Begin"/>, chunks placed where
/// <see cref="ScatterFor"/> says, <see cref="TensorsReady"/> as tensors fill, then <see cref="Complete"/> or
/// <see cref="Abort"/>. Used by one restore at a time.
/// </summary>
internal abstract unsafe class RestoreSink(ChunkLayout layout, Func<int, IKvTensorView> preparePast)
{
    private byte*[] _targets = [];
    private int _capacity;

    public ChunkLayout Layout { get; } = layout;

    /// <summary>Rows the current attempt restores.</summary>
    public int Rows { get; private set; }

    /// <summary>Whether the past was prepared (what it held before is gone).</summary>
    public bool Prepared { get; private set; }

    /// <summary>Whether an attempt is under way (begun, neither completed nor aborted).</summary>
    public bool Active { get; private set; }

    /// <summary>Milliseconds of copying left after the last chunk was placed (device sinks).</summary>
    public double CopyMs { get; protected set; }

    /// <summary>Starts an attempt that restores <paramref name="rows"/> rows: the destination is made ready (the past prepared).</summary>
    public void Begin(int rows)
    {
        if (Active) Abort();
        (Rows, Active) = (rows, true);
        (_targets, _capacity) = BeginCore(rows);
    }

    /// <summary>Makes the past hold <paramref name="rows"/> rows and returns it: every past this restore touches is prepared here.</summary>
    public IKvTensorView PreparePast(int rows)
    {
        Prepared = true;
        return preparePast(rows);
    }

    /// <summary>Where chunk <paramref name="chunk"/>'s rows of the current attempt go.</summary>
    public PayloadScatter ScatterFor(int chunk) => Layout.ScatterToPast(_targets, _capacity, chunk, Layout.RowsOf(chunk, Rows));

    /// <summary>Tensors <paramref name="first"/>..<paramref name="end"/>-1 (chunk-layout order) hold every row of the attempt.</summary>
    public virtual void TensorsReady(int first, int end) { }

    /// <summary>Every chunk was placed and verified: the past holds them.</summary>
    public void Complete()
    {
        if (!Active) return;
        Active = false;
        CompleteCore();
    }

    /// <summary>The attempt stops (a chunk failed, or the plan changed): nothing more is copied.</summary>
    public void Abort()
    {
        if (!Active) return;
        Active = false;
        AbortCore();
    }

    /// <summary>Makes the destination ready for <paramref name="rows"/> rows; returns where chunks are placed (pages backed) and its rows per head.</summary>
    protected abstract (byte*[] Targets, int Capacity) BeginCore(int rows);

    protected virtual void CompleteCore() { }

    protected virtual void AbortCore() { }
}

/// <summary>A past in host memory: chunks are placed straight into its rows.</summary>
internal sealed unsafe class HostRestoreSink(ChunkLayout layout, Func<int, IKvTensorView> preparePast) : RestoreSink(layout, preparePast)
{
    protected override (byte*[] Targets, int Capacity) BeginCore(int rows)
    {
        var view = PreparePast(rows);
        return (Layout.PopulatedPointers(view, rows), view.Capacity);
    }
}

/// <summary>
/// A past in device memory: chunks are placed into pinned staging laid out like the past (the transfer's restore
/// staging, held for the attempt), and each group of tensors that is complete is copied to the device by a copy
/// thread with one <see cref="OrtEnv.CopyTensors"/> call while later blocks are still read.
/// </summary>
internal sealed unsafe class DeviceRestoreSink(ChunkLayout layout, Func<int, IKvTensorView> preparePast, PinnedStaging staging) : RestoreSink(layout, preparePast)
{
    private OrtValue[]? _views;
    private OrtValue[] _targets = [];
    private int _targetCapacity;
    private BlockingCollection<(int First, int End)>? _ready;
    private Task? _copier;

    protected override (byte*[] Targets, int Capacity) BeginCore(int rows)
    {
        Monitor.Enter(staging);
        try
        {
            _views = staging.Views(rows);
            var staged = OrtKvTensors.View(_views, rows);
            var past = PreparePast(rows);
            _targets = past.Tensors();
            if (_targets.Length != _views.Length)
                throw new ArgumentException($"Expected {_views.Length} target tensors (key and value per layer); got {_targets.Length}.", nameof(preparePast));
            _targetCapacity = past.Capacity;
            var ready = _ready = new BlockingCollection<(int, int)>();
            var views = _views;
            _copier = Task.Factory.StartNew(() =>
            {
                foreach (var (first, end) in ready.GetConsumingEnumerable())
                    KvMemory.CopyRows(Layout.Layout, views[first..end], rows, _targets[first..end], _targetCapacity, rows);
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            return (Layout.PopulatedPointers(staged, rows), rows);
        }
        catch
        {
            Release();
            throw;
        }
    }

    public override void TensorsReady(int first, int end) => _ready?.Add((first, end));

    protected override void CompleteCore()
    {
        long start = Stopwatch.GetTimestamp();
        try
        {
            _ready!.CompleteAdding();
            _copier!.GetAwaiter().GetResult();
            CopyMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        finally
        {
            Release();
        }
    }

    protected override void AbortCore() => Release();

    private void Release()
    {
        _ready?.CompleteAdding();
        try { _copier?.Wait(); } catch (AggregateException) { } // thrown by Complete, or superseded by what stopped the attempt
        _ready?.Dispose();
        OrtKvTensors.DisposeAll(_views);
        (_ready, _copier, _views) = (null, null, null);
        Monitor.Exit(staging);
    }
}
