using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// Moves restored prefixes into past tensors in device memory: chunks are gathered (and verified, on all
/// cores) into pinned host tensors laid out exactly like the device past, then copied with one synchronous
/// <see cref="OrtEnv.CopyTensors"/> call. With no device (no GPU) the same path runs with ordinary host
/// memory, which is how it is tested. When a chunk spans several 1 MiB checksum blocks, staging and device
/// copies overlap: tensors go to the device as soon as their rows are staged. Copies are synchronous (no
/// <see cref="OrtSyncStream"/>). A prefix cache keeps one per device its generators run on.
/// </summary>
internal sealed class DeviceKvTransfer : IDisposable
{
    private readonly KvLayout _layout;
    private readonly OrtAllocator _deviceAllocator, _stagingAllocator;
    private readonly OrtEpDevice? _device;
    /// <summary>Buffers of restores, and others of captures: a capture running beside generation never holds up another request's restore. Lock each while using it.</summary>
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
        _deviceAllocator = _stagingAllocator = OrtAllocator.DefaultInstance;
        if (device is not null)
        {
            var env = OrtEnv.Instance();
            _deviceAllocator = env.CreateSharedAllocator(device, OrtDeviceMemoryType.DEFAULT, OrtAllocatorType.DeviceAllocator, new Dictionary<string, string>());
            try
            {
                _stagingAllocator = env.CreateSharedAllocator(device, OrtDeviceMemoryType.HOST_ACCESSIBLE, OrtAllocatorType.DeviceAllocator, new Dictionary<string, string>());
            }
            catch
            {
                env.ReleaseSharedAllocator(device, OrtDeviceMemoryType.DEFAULT);
                throw;
            }
        }
        _restoreStaging = new PinnedStaging(layout, _stagingAllocator);
        _captureStaging = new PinnedStaging(layout, _stagingAllocator);
    }

    /// <summary>Whether the target memory is a device's (false: host memory).</summary>
    public bool OnDevice => _device is not null;

    /// <summary>New <c>[1, kvH, tokens, D]</c> tensors in target memory (key 0, value 0, key 1, …).</summary>
    public OrtValue[] AllocatePast(int tokens) => OrtKvTensors.Allocate(_layout, tokens, _deviceAllocator).Values;

    /// <summary>
    /// Restores the longest cached prefix of <paramref name="tokens"/> into new target-memory past
    /// tensors and returns them with the report (the caller disposes the tensors).
    /// </summary>
    public (OrtValue[] Past, PrefixRestoreReport Report, double CopyMs) Restore(PrefixCache cache, ReadOnlySpan<int> tokens)
    {
        OrtValue[]? past = null;
        var (report, copyMs) = RestoreInto(cache, tokens, 0, rows =>
        {
            OrtKvTensors.DisposeAll(past);
            return (past = AllocatePast(rows), rows);
        });
        return (past ?? AllocatePast(0), report, copyMs);
    }

    /// <summary>
    /// Restores the longest cached prefix of <paramref name="tokens"/>, when it covers more than
    /// <paramref name="computedTokens"/>, into the caller's target-memory tensors: <paramref name="prepareTargets"/>(rows)
    /// returns the past tensors to fill (key 0, value 0, key 1, …, <c>Capacity</c> rows per head, rows 0.. are
    /// written). Returns the report and the milliseconds of the device copy.
    /// </summary>
    public (PrefixRestoreReport Report, double CopyMs) RestoreInto(PrefixCache cache, ReadOnlySpan<int> tokens, int computedTokens,
        Func<int, (IReadOnlyList<OrtValue> Targets, int Capacity)> prepareTargets)
    {
        ArgumentNullException.ThrowIfNull(cache);
        ArgumentNullException.ThrowIfNull(prepareTargets);
        var sink = SinkFor(cache.ChunkLayout, rows =>
        {
            var (targets, capacity) = prepareTargets(rows);
            return OrtKvTensors.View([.. targets], capacity);
        });
        var report = cache.Restore(tokens, computedTokens, cache.Chain, sink);
        return (report, sink.CopyMs);
    }

    /// <summary>Where a restore into a past in target memory puts its chunks: this transfer's restore staging, copied over as its tensors fill.</summary>
    public RestoreSink SinkFor(ChunkLayout layout, Func<int, IKvTensorView> preparePast) => new DeviceRestoreSink(layout, preparePast, _restoreStaging);

    /// <summary>
    /// Captures from past tensors in target memory (key 0, value 0, …, <paramref name="capacity"/> rows per
    /// head): their first <paramref name="rows"/> rows are copied into the pinned staging by one
    /// <see cref="OrtEnv.CopyTensors"/> call, then <paramref name="capture"/> stores the chunks from there.
    /// Returns what <paramref name="capture"/> returns.
    /// </summary>
    public T CaptureFrom<T>(IReadOnlyList<OrtValue> sources, int capacity, int rows, Func<IKvTensorView, T> capture)
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
                OrtKvTensors.DisposeAll(views);
            }
        }
    }

    /// <summary>Pinned host tensors of <paramref name="tokens"/> rows (host memory without a device); the caller disposes them.</summary>
    public OrtValue[] AllocateStaging(int tokens) => OrtKvTensors.Allocate(_layout, tokens, _stagingAllocator).Values;

    /// <summary>Copies tensors pairwise (same shapes) between host, pinned and device memory, waiting for completion.</summary>
    public void CopyTensors(IReadOnlyList<OrtValue> sources, IReadOnlyList<OrtValue> destinations)
    {
        ArgumentNullException.ThrowIfNull(sources);
        ArgumentNullException.ThrowIfNull(destinations);
        if (sources.Count == 0) return;
        int rows = checked((int)sources[0].GetTensorTypeAndShape().Shape[2]);
        KvMemory.CopyRows(_layout, sources, rows, destinations, rows, rows);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_restoreStaging) _restoreStaging.Dispose();
        lock (_captureStaging) _captureStaging.Dispose();
        if (_device is not null)
        {
            var env = OrtEnv.Instance();
            env.ReleaseSharedAllocator(_device, OrtDeviceMemoryType.DEFAULT);
            env.ReleaseSharedAllocator(_device, OrtDeviceMemoryType.HOST_ACCESSIBLE);
        }
    }
}
