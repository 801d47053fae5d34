using Microsoft.Extensions.Logging;
using OrtKvTier.Tiers;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Diagnostics;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using OrtKvTier.Tensors;

namespace OrtKvTier.Cache;

/// <summary>
/// The tiered prefix cache of one model: chunks of past keys and values named by chained keys
/// (<see cref="ChunkChain"/>), held in host memory under a byte budget and in a disk slot pool
/// (plus any <see cref="PrefixCacheOptions.ExtraTiers"/>). A hit in a lower tier is promoted to
/// host memory; stored chunks reach the lower tiers on a background thread. One cache serves any
/// number of generators and threads. Use it through <see cref="Generation.KvGenerator"/>,
/// <see cref="Generation.TextGenerator"/> or, in your own loop, <see cref="Generation.PrefixCacheHook"/>.
/// </summary>
public sealed class PrefixCache : IDisposable
{
    private readonly PrefixCacheOptions _options;
    private readonly ILogger? _logger;
    private readonly TierStack _tiers;
    private readonly LowerTierWriter _writes;
    private readonly Task? _warmUp;
    private bool _disposed;

    /// <summary>Opens the cache for <paramref name="model"/>.</summary>
    public static PrefixCache Open(KvModel model, PrefixCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new PrefixCache(model.Fingerprint, model.Layout, options, model);
    }

    /// <summary>
    /// Opens the cache for a model fingerprint and KV layout (a model loaded some other way). Without the model, an
    /// approximate <see cref="PrefixCacheOptions.DiskEncoding"/> is used only where a stored verdict of its quality gate says so.
    /// </summary>
    public PrefixCache(ModelFingerprint fingerprint, KvLayout layout, PrefixCacheOptions options) : this(fingerprint, layout, options, model: null) { }

    private PrefixCache(ModelFingerprint fingerprint, KvLayout layout, PrefixCacheOptions options, KvModel? model)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (options.Directory is { } given && PrefixCacheOptions.DirectoryFor(given, options.ShareWithGroup) is var own && own != given)
        {
            options.Logger?.LogInformation("Prefix cache: {Given} is writable by other users; this user's cache lives in {Own}.", given, own);
            options = options with { Directory = own };
        }
        _options = options;
        _logger = options.Logger;
        Layout = layout;
        Identity = SlotPoolIdentity.For(fingerprint, layout, options.ChunkTokens);
        ChunkLayout = new ChunkLayout(layout, options.ChunkTokens);
        Faults = new TierFaults(_logger);
        Secret = ResolveSecret(options, Faults, out bool diskKeyed);
        Chain = new ChunkChain(fingerprint, options.ChunkTokens, Secret, options.Salt);
        var host = new HostTier(options.HostBudgetBytes, ChunkLayout.ChunkBytes);
        if (options.LowerTierWrites == LowerTierWrites.WriteBack) host.Evicted = OnHostEviction;
        try
        {
            if (options.Directory is not null && diskKeyed)
                Disk = DiskTier.TryOpen(new DiskTierSettings(options.Directory, DiskIdentity(options, model), Secret, options.EncryptAtRest, options.DiskCapacityBytes, options.Durability, options.ShareWithGroup, options.DiskMedium), Faults, _logger);
        }
        catch
        {
            host.Dispose();
            throw;
        }
        foreach (var tier in options.ExtraTiers) tier.UseCacheSecret(Secret);
        GateExtraTiers(options, model);
        IKvChunkTier[] lower = Disk is null ? [.. options.ExtraTiers] : [Disk, .. options.ExtraTiers];
        _tiers = new TierStack(host, lower, Faults);
        _writes = new LowerTierWriter(lower, ChunkLayout.ChunkBytes, Faults, _logger);
        Costs = RestoreCosts.For(Identity);
        Planner = new RestorePlanner(_tiers, _writes, ChunkLayout, Costs, alwaysRestore: options.AlwaysRestore);
        // Off the request path, once per model identity in a process: runs the restore path once, so it is compiled.
        if (options.WarmUp && !Interlocked.Exchange(ref Costs.WarmUpStarted, true)) _warmUp = Task.Run(() => RestoreProbe.Run(ChunkLayout, Identity, _logger));
    }

    /// <summary>The name of the library's <see cref="System.Diagnostics.Metrics.Meter"/> (instruments <c>ortkv.*</c>, durations in milliseconds): listen with OpenTelemetry or <c>dotnet-counters monitor --counters OrtKvTier</c>.</summary>
    public const string MeterName = KvCacheMetrics.MeterName;

    /// <summary>The name of the library's <see cref="System.Diagnostics.ActivitySource"/>: spans <c>ortkv.restore</c> (with <c>ortkv.lookup</c>), <c>ortkv.prefill</c>, <c>ortkv.capture</c>.</summary>
    public const string ActivitySourceName = KvCacheMetrics.MeterName;

    /// <summary>Threads writing stored chunks to the lower tiers.</summary>
    public static int WriterThreads => LowerTierWriter.Threads;

    /// <summary>The model's KV layout.</summary>
    public KvLayout Layout { get; }

    /// <summary>How keys are made (no tenant).</summary>
    internal ChunkChain Chain { get; }

    /// <summary>The key that authenticates entries and makes chunk keys.</summary>
    internal CacheSecret Secret { get; }

    /// <summary>How keys are made for <paramref name="tenant"/>: tenants never compute each other's keys, so none hits (or can time) another's entries.</summary>
    internal ChunkChain DocumentChainFor(string? tenant) => ChunkChain.ForDocuments(Identity.Fingerprint, ChunkTokens, Secret, _options.Salt, tenant);

    internal ChunkChain ChainFor(string? tenant) =>
        string.IsNullOrEmpty(tenant) ? Chain : new ChunkChain(Identity.Fingerprint, ChunkTokens, Secret, _options.Salt, tenant);

    /// <summary>
    /// The secret: <see cref="PrefixCacheOptions.SecretKey"/>, <c>ORTKV_CACHE_KEY</c>, or the cache directory's key
    /// file (created at first use). A key file that cannot be trusted or made leaves the disk tier off (a warning) and
    /// the process on a key of its own; a memory-only cache with no key given uses a key of its own.
    /// </summary>
    private static CacheSecret ResolveSecret(PrefixCacheOptions options, TierFaults faults, out bool diskKeyed)
    {
        diskKeyed = true;
        try
        {
            if (options.Directory is null) return CacheKeys.Given(options.SecretKey) ?? CacheSecret.CreateRandom();
            return CacheKeys.Resolve(options.SecretKey, options.Directory, create: true, options.ShareWithGroup);
        }
        catch (ArgumentException e) when (options.SecretKey is null)
        {
            // A malformed key in the environment is the operator's setting, not a caller's argument: the cache runs
            // without what the key would have unlocked, and says so, rather than failing every request.
            diskKeyed = false;
            faults.Report(TierId.Disk, "key",
                $"the disk cache is off for this process: {e.Message} Requests run with host memory only. Fix or unset {CacheKeys.EnvironmentVariable}.", e);
            return CacheSecret.CreateRandom();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            diskKeyed = false;
            faults.Report(TierId.Disk, "key",
                $"the disk cache is off for this process: the key of {options.Directory} cannot be used ({e.Message}). Requests run with host memory only. " +
                $"Give the cache a writable directory of its own (--cache-dir, ORTKV_CACHE_DIR), set {CacheKeys.EnvironmentVariable}, or --no-cache.", e);
            return CacheSecret.CreateRandom();
        }
    }

    /// <summary>
    /// The disk pool's identity: at <see cref="PrefixCacheOptions.DiskEncoding"/> when it is exact or the model passes the
    /// quality gate (<see cref="DiskEncodingQuality"/> keeps the figures); exact, with a warning naming them, otherwise.
    /// </summary>
    private SlotPoolIdentity DiskIdentity(PrefixCacheOptions options, KvModel? model)
    {
        var verdict = Gate(options.DiskEncoding, TierId.Disk, options, model);
        DiskEncodingQuality = verdict?.Quality;
        return verdict is null or { Passed: true } ? Identity with { Encoding = options.DiskEncoding } : Identity;
    }

    /// <summary>The extra tiers at an approximate encoding the model misses the quality gate of store exact chunks instead.</summary>
    private void GateExtraTiers(PrefixCacheOptions options, KvModel? model)
    {
        foreach (var tier in options.ExtraTiers)
            if (Gate(tier.Encoding, tier.Id, options, model) is { Passed: false }) tier.FallBackToExact();
    }

    private readonly Dictionary<KvEncoding, Quality.EncodingVerdict> _verdicts = [];

    /// <summary>
    /// The quality gate's verdict on <paramref name="encoding"/> for <paramref name="tier"/> (null for exact), measured once per
    /// encoding (and stored beside the disk pool it would have, when the cache has a directory); a refusal is a warning naming the figures.
    /// </summary>
    private Quality.EncodingVerdict? Gate(KvEncoding encoding, TierId tier, PrefixCacheOptions options, KvModel? model)
    {
        if (encoding == KvEncoding.Exact) return null;
        if (!_verdicts.TryGetValue(encoding, out var verdict))
        {
            var encoded = Identity with { Encoding = encoding };
            string? verdictPath = options.Directory is null ? null : DiskTier.PoolDirectory(options.Directory, encoded, Secret.KeyId) + ".quality";
            _verdicts[encoding] = verdict = Quality.EncodingVerdicts.Decide(model, encoded, options.QualityGate, verdictPath, Secret, _logger);
        }
        if (verdict.Passed)
            _logger?.LogInformation("Prefix cache: the {Tier} tier stores KV {Encoding} for model {Fingerprint}; its quality gate passed ({Summary}).", tier, encoding.Name(), Identity.Fingerprint, verdict.Summary);
        else
            Faults.Report(tier, "quality-gate",
                $"the {tier} tier stores KV exact, not {encoding.Name()}: the model missed the quality gate ({verdict.Summary}). Keep exact, try int8 over int4, or lower PrefixCacheOptions.QualityGate's thresholds on purpose.");
        return verdict;
    }

    /// <summary>What the quality gate measured (or read back) for an approximate <see cref="PrefixCacheOptions.DiskEncoding"/>; null when exact or not measured.</summary>
    public Quality.EncodingQuality? DiskEncodingQuality { get; private set; }

    /// <summary>How the disk tier stores KV (exact unless an approximate encoding was asked for and passed the quality gate).</summary>
    public KvEncoding DiskEncoding => Disk?.Pool.Identity.Encoding ?? KvEncoding.Exact;

    /// <summary>Tokens per chunk.</summary>
    public int ChunkTokens => Chain.ChunkTokens;

    /// <summary>Bytes of one chunk's keys and values.</summary>
    public long ChunkBytes => ChunkLayout.ChunkBytes;

    /// <summary>Model fingerprint, layout and chunk length of the stored bytes.</summary>
    public SlotPoolIdentity Identity { get; }

    /// <summary>The host-memory tier.</summary>
    internal HostTier Host => _tiers.Host;

    /// <summary>The disk tier, or null for a memory-only cache.</summary>
    internal DiskTier? Disk { get; }

    /// <summary>
    /// What the cache degraded around so far, one line per tier and cause (a disk it cannot write or open, a failed
    /// write or read, chunks it could not store): each names the path and the fix. Requests are never failed for these.
    /// </summary>
    public IReadOnlyList<string> Warnings => Faults.Warnings;

    internal TierFaults Faults { get; }

    /// <summary>What restoring and computing cost here: the restore decision's figures.</summary>
    internal RestoreCosts Costs { get; }

    /// <summary>The disk tier's pool directory, or null for a memory-only cache.</summary>
    public string? DiskDirectory => Disk?.Pool.Directory;

    /// <summary>Every tier that holds chunks as host-addressable bytes, fastest first (the device tier is <see cref="Device"/>).</summary>
    public IReadOnlyList<IKvChunkTier> Tiers => _tiers.All;

    /// <summary>
    /// The device tier: null until a generator on CUDA uses this cache with
    /// <see cref="PrefixCacheOptions.DeviceBudgetBytes"/> above 0.
    /// </summary>
    internal DeviceTier? Device { get; private set; }

    private readonly object _deviceGate = new();

    private DeviceKvTransfer? _deviceTransfer;

    /// <summary>The device tier for past tensors in <paramref name="memory"/> (created on first use), or null in host memory or with no device budget.</summary>
    internal DeviceTier? DeviceTierFor(KvMemory memory) =>
        memory.OnDevice && _options.DeviceBudgetBytes > 0 ? EnableDeviceTier(memory.Allocator) : null;

    /// <summary>The pinned staging that restores into and captures from device past tensors go through (created on first use); null in host memory.</summary>
    internal DeviceKvTransfer? DeviceTransferFor(KvMemory memory)
    {
        if (!memory.OnDevice) return null;
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_deviceGate) return _deviceTransfer ??= new DeviceKvTransfer(Layout, memory.EpDevice);
    }

    /// <summary>Creates the device tier on first call, its tensors from <paramref name="allocator"/>; later calls return it.</summary>
    internal DeviceTier EnableDeviceTier(OrtAllocator allocator)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        lock (_deviceGate)
        {
            if (Device is null)
            {
                var tier = new DeviceTier(Layout, ChunkTokens, _options.DeviceBudgetBytes, allocator);
                tier.Evicted = OnDeviceEviction;
                Device = tier;
            }
            return Device;
        }
    }

    internal ChunkLayout ChunkLayout { get; }

    /// <summary>Decides where restores come from.</summary>
    internal RestorePlanner Planner { get; }

    /// <summary>
    /// Restores the longest cached prefix of <paramref name="tokens"/> into a past in <paramref name="memory"/>
    /// when it covers more than <paramref name="computedTokens"/> (and restoring beats computing it);
    /// <paramref name="preparePast"/>(n) makes the past hold n rows and returns it (not called when nothing is restored).
    /// </summary>
    /// <remarks><paramref name="runs"/>: what running the model costs (its generators measure it); without it the cache restores whatever it finds.</remarks>
    internal PrefixRestoreReport Restore(ReadOnlySpan<int> tokens, int computedTokens, KvMemory memory, ChunkChain chain, Func<int, IKvTensorView> preparePast, RunCosts? runs = null)
    {
        RestoreSink sink = DeviceTransferFor(memory) is { } transfer ? transfer.SinkFor(ChunkLayout, preparePast) : new HostRestoreSink(ChunkLayout, preparePast);
        return Restore(tokens, computedTokens, chain, sink, DeviceTierFor(memory), runs);
    }

    internal PrefixRestoreReport Restore(ReadOnlySpan<int> tokens, int computedTokens, ChunkChain chain, RestoreSink sink, DeviceTier? deviceTier = null, RunCosts? runs = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return Planner.Restore(tokens, computedTokens, chain, sink, deviceTier, runs);
    }

    /// <summary>
    /// Stores chunks <paramref name="firstChunk"/>.. of <paramref name="tokens"/> (keyed <paramref name="keys"/>) from
    /// <paramref name="past"/> in <paramref name="memory"/> (through the pinned staging from device memory), and the
    /// prefix in the device tier. Returns the chunks no tier held before.
    /// </summary>
    internal int Capture(int[] tokens, ChunkChain chain, List<ChunkKey> keys, int firstChunk, IKvTensorView past, KvMemory memory)
    {
        int stored = 0;
        if (DeviceTransferFor(memory) is not { } transfer) stored = ChunkCapture.Capture(this, chain, tokens, tokens.Length, past, keys, firstChunk);
        else if (keys.Count > firstChunk)
            stored = transfer.CaptureFrom(past.Tensors(), past.Capacity, tokens.Length, host => ChunkCapture.Capture(this, chain, tokens, tokens.Length, host, keys, firstChunk));
        DeviceTierFor(memory)?.Store(keys, tokens, past.Tensors(), past.Capacity);
        return stored;
    }

    /// <summary>
    /// How many leading tokens of <paramref name="tokens"/> some tier holds, in whole chunks
    /// (from the index only; bytes are verified when restored).
    /// </summary>
    public int CachedPrefixLength(ReadOnlySpan<int> tokens, string? tenant = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _tiers.IndexedChainLength(ChainFor(tenant).Keys(tokens)) * ChunkTokens;
    }

    /// <summary>Waits until every stored chunk has reached the lower tiers and makes the disk tier durable.</summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        FlushLowerTiers(Timeout.InfiniteTimeSpan);
    }

    private bool FlushLowerTiers(TimeSpan timeout)
    {
        if (_options.LowerTierWrites == LowerTierWrites.WriteBack)
            foreach (var chunk in Host.TakePendingLowerWrites())
            {
                _writes.Enqueue(chunk, _writes.AllTiers);
                chunk.Release();
            }
        bool done = _writes.Flush(timeout);
        foreach (var tier in _tiers.Lower) tier.Flush();
        return done;
    }

    /// <summary>Drops every chunk from every tier that can be written.</summary>
    public void Clear()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Flush();
        foreach (var tier in Tiers) tier.Clear();
    }

    /// <summary>Counters of every tier and the writes still queued.</summary>
    public PrefixCacheStats GetStats()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        IEnumerable<IKvTier> tiers = Device is { } device ? [device, .. Tiers] : Tiers;
        return new PrefixCacheStats(ChunkTokens, ChunkBytes, tiers.Select(t => t.GetStats()).ToArray(), _writes.Pending);
    }

    /// <summary>
    /// Writes what is queued to the lower tiers (waiting at most <see cref="PrefixCacheOptions.CloseTimeout"/>; what is
    /// still queued then is counted and reported as not stored), then closes every tier.
    /// </summary>
    public void Dispose()
    {
        if (_disposed) return;
        try
        {
            if (_options.LowerTierWrites == LowerTierWrites.WriteBack)
                foreach (var chunk in Host.TakePendingLowerWrites())
                {
                    _writes.Enqueue(chunk, _writes.AllTiers);
                    chunk.Release();
                }
            _writes.Close(_options.CloseTimeout);
            foreach (var tier in _tiers.Lower) tier.Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _logger?.LogWarning(e, "Prefix cache: flushing on dispose failed; entries written earlier are unaffected.");
        }
        try { _warmUp?.Wait(); } catch (AggregateException) { } // the probe logs its own failures
        Device?.Dispose();
        _deviceTransfer?.Dispose();
        _disposed = true;
        _writes.Dispose();
        _tiers.Dispose();
    }

    /// <summary>
    /// Stores the full chunks <paramref name="firstChunk"/>.. of <paramref name="tokens"/> that host
    /// memory does not hold, filling each one's bytes with <paramref name="fill"/>(chunk index,
    /// destination): new chunks go to every tier, chunks restored from a lower tier are promoted.
    /// Returns how many chunks no tier held before.
    /// </summary>
    internal int Store(ReadOnlySpan<int> tokens, IReadOnlyList<ChunkKey> keys, int firstChunk, Action<int, HostChunk> fill)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int stored = 0;
        for (int i = firstChunk; i < keys.Count; i++)
        {
            if (Host.Contains(keys[i])) continue;
            // Only local tiers are asked here; the writer threads ask each lower tier before writing to it.
            bool isNew = !_tiers.HeldBelowHost(keys[i]);
            var chunk = Host.NewChunk(keys[i], tokens.Slice(i * ChunkTokens, ChunkTokens));
            try
            {
                fill(i, chunk);
                bool writeBack = _options.LowerTierWrites == LowerTierWrites.WriteBack;
                chunk.PendingLowerWrite = isNew && writeBack && _writes.HasLowerTiers;
                bool held = Host.Add(chunk);
                if (held) KvCacheMetrics.BytesWritten.Add(ChunkBytes, KvCacheMetrics.Tier(Host.Id.Name));
                if (isNew && _writes.HasLowerTiers && (!writeBack || !held))
                {
                    chunk.PendingLowerWrite = false;
                    _writes.Enqueue(chunk, _writes.AllTiers);
                }
                if (isNew && (held || _writes.HasLowerTiers)) stored++;
            }
            finally
            {
                chunk.Release();
            }
        }
        return stored;
    }

    /// <summary>A prefix leaving device memory: the chunks host memory lacks are copied there (and on to the lower tiers).</summary>
    private void OnDeviceEviction(IReadOnlyList<ChunkKey> keys, int[] tokens, OrtValue[] tensors)
    {
        KvCacheMetrics.Evictions.Add(1, KvCacheMetrics.Tier(TierId.Device.Name));
        if (_disposed || keys.All(Host.Contains)) return;
        try
        {
            int rows = keys.Count * ChunkTokens;
            using var host = OrtKvTensors.Allocate(Layout, rows);
            KvMemory.CopyRows(Layout, tensors, rows, host.Values, rows, rows);
            ChunkCapture.Capture(this, Chain, tokens, rows, host, [.. keys], firstChunk: 0);
        }
        catch (Exception e) when (e is OnnxRuntimeException or OutOfMemoryException or InvalidOperationException)
        {
            _logger?.LogWarning(e, "Prefix cache: copying a prefix of {Chunks} chunks evicted from device memory to host memory failed; it is dropped.", keys.Count);
        }
    }

    private void OnHostEviction(HostChunk chunk)
    {
        KvCacheMetrics.Evictions.Add(1, KvCacheMetrics.Tier(Host.Id.Name));
        if (chunk.PendingLowerWrite && !_disposed)
        {
            chunk.PendingLowerWrite = false;
            _writes.Enqueue(chunk, _writes.AllTiers);
        }
    }
}

/// <summary>What a cache holds: per-tier counters and the chunks still queued for the lower tiers.</summary>
public sealed record PrefixCacheStats(int ChunkTokens, long ChunkBytes, IReadOnlyList<KvTierStats> Tiers, int PendingWrites);
