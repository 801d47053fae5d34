using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Transfer;

/// <summary>
/// Moves restored prefixes into past tensors in device memory: chunks are gathered (and slot reads
/// verified, on all cores) into pinned host tensors laid out exactly like the device past, then
/// copied with one synchronous <see cref="OrtEnv.CopyTensors"/> call. With no device (no GPU) the same
/// path runs with ordinary host memory, which is how it is tested. When a chunk spans several 1 MiB
/// checksum blocks, staging and device copies overlap: tensors go to the device as soon as their
/// rows are staged. Copies are synchronous (no <see cref="OrtSyncStream"/>). A model on CUDA
/// restores through one of these (<see cref="KvModel"/> keeps it).
/// </summary>
public sealed class DeviceKvTransfer : IDisposable
{
    private readonly KvLayout _layout;
    private readonly OrtAllocator _deviceAllocator;
    private readonly OrtAllocator _stagingAllocator;
    private readonly OrtEpDevice? _device;
    /// <summary>
    /// Pinned buffers reused by every restore, and others by every capture (pinning memory costs far more
    /// than copying it): a capture running beside generation never holds up another request's restore.
    /// </summary>
    private readonly PinnedStaging _restoreStaging, _captureStaging;

    /// <summary>
    /// For <paramref name="device"/> (a CUDA <see cref="OrtEpDevice"/> from <see cref="KvModel.EpDevice"/>):
    /// device memory and pinned staging from <see cref="OrtEnv.CreateSharedAllocator"/>. Null: host memory for both.
    /// </summary>
    public DeviceKvTransfer(KvLayout layout, OrtEpDevice? device)
    {
        ArgumentNullException.ThrowIfNull(layout);
        _layout = layout;
        _device = device;
        _restoreStaging = new PinnedStaging(this);
        _captureStaging = new PinnedStaging(this);
        if (device is null)
        {
            _deviceAllocator = _stagingAllocator = OrtAllocator.DefaultInstance;
            return;
        }
        var env = OrtEnv.Instance();
        _deviceAllocator = env.CreateSharedAllocator(device, OrtDeviceMemoryType.DEFAULT, OrtAllocatorType.DeviceAllocator, new Dictionary<string, string>());
        _stagingAllocator = env.CreateSharedAllocator(device, OrtDeviceMemoryType.HOST_ACCESSIBLE, OrtAllocatorType.DeviceAllocator, new Dictionary<string, string>());
    }

    /// <summary>Whether the target memory is a device's (false: host memory).</summary>
    public bool OnDevice => _device is not null;

    /// <summary>New <c>[1, kvH, tokens, D]</c> tensors in target memory (key 0, value 0, key 1, …).</summary>
    public OrtValue[] AllocatePast(int tokens) => Allocate(_deviceAllocator, tokens);

    /// <summary>
    /// Restores the longest cached prefix of <paramref name="tokens"/> into new target-memory past
    /// tensors and returns them with the report (the caller disposes the tensors).
    /// </summary>
    public (OrtValue[] Past, PrefixRestoreReport Report, double CopyMs) Restore(PrefixCache cache, ReadOnlySpan<int> tokens)
    {
        OrtValue[]? past = null;
        var (report, copyMs) = RestoreInto(cache, tokens, 0, rows => (past = AllocatePast(rows), rows));
        return (past ?? AllocatePast(0), report, copyMs);
    }

    /// <summary>
    /// Restores the longest cached prefix of <paramref name="tokens"/>, when it covers more than
    /// <paramref name="computedTokens"/>, into the caller's target-memory tensors: chunks are staged
    /// (and verified) in the pinned buffers, then <paramref name="prepareTargets"/>(rows) returns the
    /// past tensors to fill (key 0, value 0, key 1, …, <c>Capacity</c> rows per head, rows 0.. are
    /// written) and one <see cref="OrtEnv.CopyTensors"/> call fills them. Returns the report and the
    /// milliseconds of that copy.
    /// </summary>
    public (PrefixRestoreReport Report, double CopyMs) RestoreInto(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens,
        Func<int, (IReadOnlyList<OrtValue> Targets, int Capacity)> prepareTargets)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(prepareTargets);
        lock (_restoreStaging)
        {
            bool clobbered = false;
            if (PayloadChecksum.BlockCount(cache.ChunkBytes) > 1)
            {
                if (RestoreOverlapped(cache, tokens, computedTokens, prepareTargets, out clobbered) is { } overlapped) return overlapped;
                // A chunk failed verification after the targets were prepared: their rows are gone, restore what is intact from scratch.
                if (clobbered) computedTokens = 0;
            }
            OrtValue[]? views = null;
            try
            {
                var report = PrefixTransfer.Restore(cache, tokens, computedTokens, length =>
                {
                    DisposeAll(views);
                    views = _restoreStaging.Views(length);
                    return OrtKvTensors.View(views, length);
                });
                int restored = report.RestoredTokens;
                if (restored == 0)
                {
                    if (clobbered) prepareTargets(0);
                    return (report, 0);
                }
                var (targets, capacity) = prepareTargets(restored);
                RequireTargets(targets, views!.Length);
                long start = Stopwatch.GetTimestamp();
                KvMemory.CopyRows(_layout, views, restored, targets, capacity, restored);
                return (report, Stopwatch.GetElapsedTime(start).TotalMilliseconds);
            }
            finally
            {
                DisposeAll(views);
            }
        }
    }

    /// <summary>
    /// The restore with staging and device copies overlapped: chunks are staged one checksum block (1 MiB,
    /// a run of whole layers) of every chunk at a time, and a copy thread moves the tensors that are complete
    /// to the device while the next blocks are read and verified. Null when a chunk failed verification
    /// (nothing is restored; the plain restore then restores the chain before it); <paramref name="clobbered"/>
    /// says whether the targets had been prepared by then. CopyMs is the copying left after the last block was staged.
    /// </summary>
    private (PrefixRestoreReport Report, double CopyMs)? RestoreOverlapped(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens,
        Func<int, (IReadOnlyList<OrtValue> Targets, int Capacity)> prepareTargets, out bool clobbered)
    {
        bool prepared = false;
        OrtValue[]? views = null;
        IReadOnlyList<OrtValue>? targets = null;
        int rows = 0, capacity = 0;
        using var ready = new BlockingCollection<(int First, int End)>();
        Task? copier = null;
        try
        {
            var report = PrefixTransfer.RestoreInStages(cache, tokens, computedTokens, length =>
            {
                views = _restoreStaging.Views(length);
                (targets, capacity) = prepareTargets(length);
                prepared = true;
                RequireTargets(targets, views.Length);
                rows = length;
                copier = Task.Factory.StartNew(() =>
                {
                    foreach (var (first, end) in ready.GetConsumingEnumerable())
                        KvMemory.CopyRows(_layout, views[first..end], rows, targets.Skip(first).Take(end - first).ToArray(), capacity, rows);
                }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
                return OrtKvTensors.View(views, length);
            }, (first, end) => ready.Add((first, end)));
            ready.CompleteAdding();
            long start = Stopwatch.GetTimestamp();
            copier?.GetAwaiter().GetResult();
            double copyMs = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            clobbered = report is null && prepared;
            return report is null ? null : (report, copyMs);
        }
        finally
        {
            ready.CompleteAdding();
            try { copier?.Wait(); } catch (AggregateException) { } // already thrown above, or superseded by the staging error
            DisposeAll(views);
        }
    }

    private static void RequireTargets(IReadOnlyList<OrtValue> targets, int expected)
    {
        if (targets.Count != expected)
            throw new ArgumentException($"Expected {expected} target tensors (key and value per layer); got {targets.Count}.", nameof(targets));
    }

    /// <summary>
    /// Captures from past tensors in target memory (key 0, value 0, …, <paramref name="capacity"/> rows per
    /// head): their first <paramref name="rows"/> rows are copied into the pinned staging by one
    /// <see cref="OrtEnv.CopyTensors"/> call, then <paramref name="capture"/> stores the chunks from there.
    /// Returns what <paramref name="capture"/> returns.
    /// </summary>
    internal T CaptureFrom<T>(IReadOnlyList<OrtValue> sources, int capacity, int rows, Func<IKvTensorView, T> capture)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(capture);
        lock (_captureStaging)
        {
            var views = _captureStaging.Views(rows);
            try
            {
                KvMemory.CopyRows(_layout, sources, capacity, views, rows, rows);
                return capture(OrtKvTensors.View(views, rows));
            }
            finally
            {
                DisposeAll(views);
            }
        }
    }

    /// <summary>Pinned buffers, one per past tensor, grown when too small; the caller locks the instance while using them.</summary>
    private sealed class PinnedStaging(DeviceKvTransfer owner)
    {
        private OrtValue[]? _buffers;
        private int _tokens;

        /// <summary>Views <c>[1, kvH, tokens, D]</c> over the start of the buffers (the caller disposes the views).</summary>
        public unsafe OrtValue[] Views(int tokens)
        {
            var layout = owner._layout;
            if (_buffers is null || tokens > _tokens)
            {
                Release();
                _tokens = Math.Max(tokens, _tokens + _tokens / 4);
                _buffers = owner.Allocate(owner._stagingAllocator, _tokens);
            }
            var views = new OrtValue[_buffers.Length];
            long bytes = (long)layout.KvHeads * tokens * layout.BytesPerHeadToken;
            try
            {
                for (int i = 0; i < views.Length; i++)
                    views[i] = OrtValue.CreateTensorValueWithData(_buffers[i].GetTensorMemoryInfo(), layout.OrtElementType,
                        [1, layout.KvHeads, tokens, layout.HeadSize], (nint)KvMemory.Start(_buffers[i]), bytes);
            }
            catch
            {
                DisposeAll(views);
                throw;
            }
            return views;
        }

        public void Release()
        {
            DisposeAll(_buffers);
            _buffers = null;
        }
    }

    /// <summary>Copies tensors pairwise (same shapes) between host, pinned and device memory, waiting for completion.</summary>
    public void CopyTensors(IReadOnlyList<OrtValue> sources, IReadOnlyList<OrtValue> destinations)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(destinations);
        if (sources.Count == 0) return;
        int rows = checked((int)sources[0].GetTensorTypeAndShape().Shape[2]);
        KvMemory.CopyRows(_layout, sources, rows, destinations, rows, rows);
    }

    /// <summary>Pinned host tensors of <paramref name="tokens"/> rows (host memory without a device).</summary>
    public OrtValue[] AllocateStaging(int tokens) => Allocate(_stagingAllocator, tokens);

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_restoreStaging) _restoreStaging.Release();
        lock (_captureStaging) _captureStaging.Release();
        if (_device is not null)
        {
            var env = OrtEnv.Instance();
            env.ReleaseSharedAllocator(_device, OrtDeviceMemoryType.DEFAULT);
            env.ReleaseSharedAllocator(_device, OrtDeviceMemoryType.HOST_ACCESSIBLE);
        }
    }

    private OrtValue[] Allocate(OrtAllocator allocator, int tokens) => OrtKvTensors.Allocate(_layout, tokens, allocator).Values;

    private static void DisposeAll(OrtValue?[]? values)
    {
        if (values is null) return;
        foreach (var v in values) v?.Dispose();
    }
}
