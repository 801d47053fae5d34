using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using OrtKvTier.Cache.Tiers;
using OrtKvTier.Cache.Tiers.Remote;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Diagnostics;
using OrtKvTier.Model;
using OrtKvTier.Storage;

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
    /// <summary>Bytes of chunks queued for the lower tiers, at most (a capture waits when it is reached).</summary>
    private const long PendingWriteBytes = 256L << 20;

    private readonly PrefixCacheOptions _options;
    private readonly ILogger? _logger;
    private readonly IKvChunkTier[] _lower;
    private readonly BlockingCollection<(HostChunk Chunk, int TierLimit)> _writes;
    private readonly Thread[] _writers;
    private readonly object _pendingGate = new();
    private int _pending;
    private bool _disposed;

    /// <summary>Opens the cache for <paramref name="model"/>.</summary>
    public static PrefixCache Open(KvModel model, PrefixCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new PrefixCache(model.Fingerprint, model.Layout, options);
    }

    /// <summary>Opens the cache for a model fingerprint and KV layout (a model loaded some other way).</summary>
    public PrefixCache(ModelFingerprint fingerprint, KvLayout layout, PrefixCacheOptions options)
    {
        ArgumentNullException.ThrowIfNull(layout);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _options = options;
        _logger = options.Logger;
        Layout = layout;
        Chain = new ChunkChain(fingerprint, options.ChunkTokens, options.Salt);
        Identity = SlotPoolIdentity.For(fingerprint, layout, options.ChunkTokens);
        ChunkLayout = new ChunkLayout(layout, options.ChunkTokens);
        Host = new HostTier(options.HostBudgetBytes, ChunkLayout.ChunkBytes);
        if (options.LowerTierWrites == LowerTierWrites.WriteBack) Host.Evicted = OnHostEviction;

        var lower = new List<IKvChunkTier>();
        if (options.Directory is not null)
        {
            Disk = DiskTier.Open(options.Directory, Identity, options.DiskCapacityBytes, options.Durability, _logger);
            Disk.Pool.Dropped += (_, _) => KvCacheMetrics.DamagedChunks.Add(1, KvCacheMetrics.Tier(Disk.Name));
            lower.Add(Disk);
        }
        lower.AddRange(options.ExtraTiers);
        _lower = lower.ToArray();
        Tiers = [Host, .. _lower];
        _writes = new(checked((int)Math.Clamp(PendingWriteBytes / ChunkBytes, 8, 256)));
        // Several writers: the disk tier writes slots in parallel, a remote tier overlaps round trips.
        _writers = Enumerable.Range(0, _lower.Length == 0 ? 0 : WriterThreads)
            .Select(i => new Thread(WriteLowerTiers) { IsBackground = true, Name = $"ortkv-cache-writer-{i}" }).ToArray();
        foreach (var writer in _writers) writer.Start();
    }

    /// <summary>Threads writing stored chunks to the lower tiers.</summary>
    public static int WriterThreads { get; } = Math.Clamp(Environment.ProcessorCount / 2, 2, 4);

    /// <summary>The model's KV layout.</summary>
    public KvLayout Layout { get; }

    /// <summary>How keys are made.</summary>
    public ChunkChain Chain { get; }

    /// <summary>Tokens per chunk.</summary>
    public int ChunkTokens => Chain.ChunkTokens;

    /// <summary>Bytes of one chunk's keys and values.</summary>
    public long ChunkBytes => ChunkLayout.ChunkBytes;

    /// <summary>Model fingerprint, layout and chunk length of the stored bytes.</summary>
    public SlotPoolIdentity Identity { get; }

    /// <summary>The host-memory tier.</summary>
    public HostTier Host { get; }

    /// <summary>The disk tier, or null for a memory-only cache.</summary>
    public DiskTier? Disk { get; }

    /// <summary>Every tier that holds chunks as host-addressable bytes, fastest first (the device tier is <see cref="Device"/>).</summary>
    public IReadOnlyList<IKvChunkTier> Tiers { get; }

    /// <summary>
    /// The device tier: null until a generator on CUDA uses this cache with
    /// <see cref="PrefixCacheOptions.DeviceBudgetBytes"/> above 0.
    /// </summary>
    public DeviceTier? Device { get; private set; }

    private readonly object _deviceGate = new();

    /// <summary>The device tier for a model on CUDA (created on first use), or null on the CPU or with no device budget.</summary>
    internal DeviceTier? DeviceTierFor(KvModel model) =>
        model.KvMemory.OnDevice && _options.DeviceBudgetBytes > 0 ? EnableDeviceTier(model.KvMemory.Allocator) : null;

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

    /// <summary>
    /// How many leading tokens of <paramref name="tokens"/> some tier holds, in whole chunks
    /// (from the index only; bytes are verified when restored).
    /// </summary>
    public int CachedPrefixLength(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return IndexedChainLength(Chain.Keys(tokens)) * ChunkTokens;
    }

    /// <summary>Waits until every stored chunk has reached the lower tiers and makes the disk tier durable.</summary>
    public void Flush()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_options.LowerTierWrites == LowerTierWrites.WriteBack)
            foreach (var chunk in Host.TakePendingLowerWrites())
            {
                Enqueue(chunk, _lower.Length);
                chunk.Release();
            }
        lock (_pendingGate)
            while (_pending > 0) Monitor.Wait(_pendingGate);
        Disk?.Flush();
    }

    /// <summary>Drops every chunk from every tier that can be written.</summary>
    public void Clear()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Flush();
        Host.Clear();
        if (Disk is { Pool.IsReadOnly: false }) Disk.Pool.Clear();
    }

    /// <summary>Counters of every tier and the writes still queued.</summary>
    public PrefixCacheStats GetStats()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var tiers = Tiers.Select(t => t.GetStats());
        if (Device is { } device) tiers = tiers.Prepend(device.GetStats());
        lock (_pendingGate)
            return new PrefixCacheStats(ChunkTokens, ChunkBytes, tiers.ToArray(), _pending);
    }

    /// <summary>Writes what is queued to the lower tiers, then closes every tier.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        try
        {
            Flush();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            _logger?.LogWarning(e, "Prefix cache: flushing on dispose failed; entries written earlier are unaffected.");
        }
        Device?.Dispose();
        _disposed = true;
        _writes.CompleteAdding();
        foreach (var writer in _writers) writer.Join();
        _writes.Dispose();
        foreach (var tier in Tiers) tier.Dispose();
    }

    /// <summary>
    /// Finds the longest chain of chunks some tier indexes at the start of <paramref name="tokens"/>,
    /// up to <paramref name="maxChunks"/>, leasing those in host memory. Nothing is read from lower
    /// tiers yet: <see cref="FillChunk"/> reads them straight into the past tensors. When fewer than
    /// <paramref name="minChunks"/> are found the plan is empty.
    /// </summary>
    internal ChainPlan Plan(ReadOnlySpan<int> tokens, int maxChunks, int minChunks = 1)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        long start = Stopwatch.GetTimestamp();
        int chunks = Math.Min(maxChunks, Chain.FullChunks(tokens.Length));
        var keys = Chain.Keys(tokens[..(chunks * ChunkTokens)]);
        int count = IndexedChainLength(keys);
        if (count < minChunks) count = 0;
        var leased = new HostChunk?[count];
        var from = new string?[count];
        for (int i = 0; i < count; i++)
            if (Host.TryLease(keys[i], ChunkTokensOf(tokens, i), out var chunk)) (leased[i], from[i]) = (chunk, Host.Name);
        var plan = new ChainPlan(keys[..count], tokens[..(count * ChunkTokens)].ToArray(), leased, from, start);
        PrefetchRemote(plan);
        return plan;
    }

    /// <summary>
    /// Chunks that neither host memory nor the disk hold are fetched from remote tiers now, in one round
    /// trip per tier, into host memory (and promoted: host at once, disk by the writer threads).
    /// </summary>
    private void PrefetchRemote(ChainPlan plan)
    {
        var missing = Enumerable.Range(0, plan.Count).Where(i => plan.Leased[i] is null && Disk?.Contains(plan.Keys[i]) != true).ToList();
        foreach (var remote in _lower.OfType<RemoteTier>())
        {
            if (missing.Count == 0) return;
            var chunks = missing.Select(i => Host.NewChunk(plan.Keys[i], ChunkTokensOf(plan.Tokens, i))).ToArray();
            bool[] found;
            try
            {
                found = remote.TryReadMany(missing.Select(i => plan.Keys[i]).ToArray(), chunks.Select(c => c.Tokens).ToArray(),
                    chunks.Select(c => c.Memory).ToArray());
            }
            catch
            {
                foreach (var c in chunks) c.Release();
                throw;
            }
            var still = new List<int>();
            for (int j = 0; j < missing.Count; j++)
            {
                if (!found[j])
                {
                    chunks[j].Release();
                    still.Add(missing[j]);
                    continue;
                }
                (plan.Leased[missing[j]], plan.From[missing[j]]) = (chunks[j], remote.Name);
                if (Host.Add(chunks[j])) PromoteAbove(chunks[j], remote.Name);
            }
            missing = still;
        }
    }

    /// <summary>
    /// Puts the first <paramref name="tokens"/> rows of plan chunk <paramref name="index"/> into the
    /// past tensors: copied from its host lease, or read and verified straight from the first lower
    /// tier that returns it. Returns the tier's name, or null when no tier returned it intact.
    /// </summary>
    internal unsafe string? FillChunk(ChainPlan plan, int index, int tokens, byte*[] past, int capacity)
    {
        var scatter = ChunkLayout.ScatterToPast(past, capacity, index, tokens);
        if (OpenStaged(plan, index, scatter) is not { } chunk) return null;
        chunk.Fill(0, PayloadChecksum.BlockCount(ChunkBytes));
        if (chunk.Finish() is { } tier) return tier;
        // The disk's copy failed verification (and was dropped): another lower tier may still hold the chunk.
        if (ReadFromOtherTiers(plan.Keys[index], ChunkTokensOf(plan.Tokens, index)) is not var (other, name)) return null;
        try
        {
            scatter.Place(other.Pointer, 0, other.Length);
            return CountHit(name);
        }
        finally
        {
            other.Release();
        }
    }

    /// <summary>
    /// Opens plan chunk <paramref name="index"/> for a restore in stages (<see cref="StagedChunk.Fill"/> a range of
    /// checksum blocks at a time, then <see cref="StagedChunk.Finish"/>): its host lease, a verified read from the
    /// disk tier begun, or the chunk read whole from another lower tier. Null when no tier has it.
    /// </summary>
    internal StagedChunk? OpenStaged(ChainPlan plan, int index, PayloadScatter scatter)
    {
        if (plan.Leased[index] is { } leased) return new StagedChunk(this, scatter, leased, owned: false, plan.From[index] ?? Host.Name);
        var key = plan.Keys[index];
        var chunkTokens = ChunkTokensOf(plan.Tokens, index);
        if (Disk is { } disk && disk.Contains(key))
            try
            {
                if (disk.Pool.BeginRead(key, chunkTokens, scatter) is { } read) return new StagedChunk(this, disk, read);
            }
            catch (Exception e) when (e is IOException or InvalidOperationException)
            {
                ReadFailed(e, key, disk.Name);
            }
        return ReadFromOtherTiers(key, chunkTokens) is var (chunk, tier) ? new StagedChunk(this, scatter, chunk, owned: true, tier) : null;
    }

    /// <summary>A chunk read whole from the first lower tier other than the disk that returns it (and promoted), or null.</summary>
    private (HostChunk Chunk, string Tier)? ReadFromOtherTiers(ChunkKey key, ReadOnlySpan<int> tokens)
    {
        foreach (var tier in _lower)
        {
            if (tier is DiskTier) continue;
            var chunk = Host.NewChunk(key, tokens);
            try
            {
                if (!tier.TryRead(key, tokens, chunk.Bytes)) continue;
                if (Host.Add(chunk)) PromoteAbove(chunk, tier.Name);
                return (chunk.Retain(), tier.Name);
            }
            catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException)
            {
                ReadFailed(e, key, tier.Name);
            }
            finally
            {
                chunk.Release();
            }
        }
        return null;
    }

    internal void ReadFailed(Exception e, ChunkKey key, string tier) =>
        _logger?.LogWarning(e, "Prefix cache: reading chunk {Key} from the {Tier} tier failed; treating it as a miss.", key, tier);

    internal string CountHit(string tier)
    {
        KvCacheMetrics.ChunkHits.Add(1, KvCacheMetrics.Tier(tier));
        KvCacheMetrics.BytesRead.Add(ChunkBytes, KvCacheMetrics.Tier(tier));
        return tier;
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
            // Only the local disk is asked here; the writer threads ask each lower tier before writing to it.
            bool isNew = Disk?.Contains(keys[i]) != true;
            var chunk = Host.NewChunk(keys[i], ChunkTokensOf(tokens, i));
            try
            {
                fill(i, chunk);
                bool writeBack = _options.LowerTierWrites == LowerTierWrites.WriteBack;
                chunk.PendingLowerWrite = isNew && writeBack && _lower.Length > 0;
                bool held = Host.Add(chunk);
                if (held) KvCacheMetrics.BytesWritten.Add(ChunkBytes, KvCacheMetrics.Tier(Host.Name));
                if (isNew && _lower.Length > 0 && (!writeBack || !held))
                {
                    chunk.PendingLowerWrite = false;
                    Enqueue(chunk, _lower.Length);
                }
                if (isNew && (held || _lower.Length > 0)) stored++;
            }
            finally
            {
                chunk.Release();
            }
        }
        return stored;
    }

    /// <summary>Leading keys that some tier's index holds (their bytes are verified only when read).</summary>
    internal int IndexedChainLength(ChunkKey[] keys)
    {
        int count = 0;
        while (count < keys.Length && Tiers.Any(t => t.Contains(keys[count]))) count++;
        return count;
    }

    private ReadOnlySpan<int> ChunkTokensOf(ReadOnlySpan<int> tokens, int chunk) => tokens.Slice(chunk * ChunkTokens, ChunkTokens);

    /// <summary>A chunk read from a lower tier is also written to the lower tiers above that one.</summary>
    private void PromoteAbove(HostChunk chunk, string tierName)
    {
        int index = Array.FindIndex(_lower, t => t.Name == tierName);
        if (index > 0) Enqueue(chunk, index);
    }

    /// <summary>A prefix leaving device memory: the chunks host memory lacks are copied there (and on to the lower tiers).</summary>
    private void OnDeviceEviction(IReadOnlyList<ChunkKey> keys, int[] tokens, OrtValue[] tensors)
    {
        KvCacheMetrics.Evictions.Add(1, KvCacheMetrics.Tier(DeviceTier.TierName));
        if (_disposed || keys.All(Host.Contains)) return;
        try
        {
            int rows = keys.Count * ChunkTokens;
            using var host = Generation.OrtKvTensors.Allocate(Layout, rows);
            Transfer.KvMemory.CopyRows(Layout, tensors, rows, host.Values, rows, rows);
            PrefixTransfer.Capture(this, tokens, rows, host, [.. keys], firstChunk: 0);
        }
        catch (Exception e) when (e is OnnxRuntimeException or OutOfMemoryException or InvalidOperationException)
        {
            _logger?.LogWarning(e, "Prefix cache: copying a prefix of {Chunks} chunks evicted from device memory to host memory failed; it is dropped.", keys.Count);
        }
    }

    private void OnHostEviction(HostChunk chunk)
    {
        KvCacheMetrics.Evictions.Add(1, KvCacheMetrics.Tier(Host.Name));
        if (chunk.PendingLowerWrite && !_disposed)
        {
            chunk.PendingLowerWrite = false;
            Enqueue(chunk, _lower.Length);
        }
    }

    private void Enqueue(HostChunk chunk, int tierLimit)
    {
        lock (_pendingGate) _pending++;
        _writes.Add((chunk.Retain(), tierLimit));
    }

    private void WriteLowerTiers()
    {
        foreach (var (chunk, limit) in _writes.GetConsumingEnumerable())
        {
            try
            {
                for (int t = 0; t < limit; t++)
                {
                    var tier = _lower[t];
                    if (!tier.Contains(chunk.Key) && tier.Write(chunk.Key, chunk.Tokens, chunk.Bytes))
                        KvCacheMetrics.BytesWritten.Add(chunk.Length, KvCacheMetrics.Tier(tier.Name));
                }
            }
            catch (Exception e)
            {
                _logger?.LogWarning(e, "Prefix cache: writing chunk {Key} to the lower tiers failed; it stays in memory only.", chunk.Key);
            }
            finally
            {
                chunk.Release();
                lock (_pendingGate)
                {
                    _pending--;
                    Monitor.PulseAll(_pendingGate);
                }
            }
        }
    }
}

/// <summary>What a cache holds: per-tier counters and the chunks still queued for the lower tiers.</summary>
public sealed record PrefixCacheStats(int ChunkTokens, long ChunkBytes, IReadOnlyList<KvTierStats> Tiers, int PendingWrites);

/// <summary>A chain found in the tiers' indexes: keys, token ids and host leases (null where a lower tier holds the chunk). Dispose releases the leases.</summary>
internal sealed class ChainPlan(ChunkKey[] keys, int[] tokens, HostChunk?[] leased, string?[] from, long startTimestamp) : IDisposable
{
    public ChunkKey[] Keys { get; } = keys;
    public int[] Tokens { get; } = tokens;
    public HostChunk?[] Leased { get; } = leased;
    /// <summary>The tier each leased chunk came from (host, or a remote tier it was just fetched from).</summary>
    public string?[] From { get; } = from;
    public int Count => Keys.Length;
    public long StartTimestamp { get; } = startTimestamp;

    public void Dispose()
    {
        foreach (var chunk in Leased) chunk?.Release();
    }
}

/// <summary>
/// One plan chunk restored in stages: its bytes come from host memory or from a verified disk read
/// done a range of checksum blocks at a time, so past tensors can be copied on while later blocks are read.
/// </summary>
internal sealed unsafe class StagedChunk
{
    private readonly PrefixCache _cache;
    private readonly PayloadScatter _scatter;
    private readonly HostChunk? _memory;
    private readonly bool _owned;
    private readonly DiskTier? _disk;
    private readonly SlotRead? _read;
    private readonly string _tier;
    private bool _failed;

    public StagedChunk(PrefixCache cache, PayloadScatter scatter, HostChunk memory, bool owned, string tier)
    {
        (_cache, _scatter, _memory, _owned, _tier) = (cache, scatter, memory, owned, tier);
    }

    public StagedChunk(PrefixCache cache, DiskTier disk, SlotRead read)
    {
        (_cache, _scatter, _disk, _read, _tier) = (cache, read.Scatter, disk, read, disk.Name);
    }

    /// <summary>Places payload blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive).</summary>
    public void Fill(int firstBlock, int endBlock)
    {
        if (_failed) return;
        if (_memory is not null)
        {
            long start = (long)firstBlock * SlotPoolFormat.ChecksumBlockBytes;
            long end = Math.Min((long)endBlock * SlotPoolFormat.ChecksumBlockBytes, _memory.Length);
            if (end > start) _scatter.Place(_memory.Pointer + start, start, end - start);
            return;
        }
        try
        {
            _disk!.Pool.ReadBlocks(_read!, firstBlock, Math.Min(endBlock, _read!.Blocks));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _failed = true;
            _cache.ReadFailed(e, _read!.Entry.Key, _tier);
        }
    }

    /// <summary>After every block is placed: the tier the chunk came from, or null when its bytes failed verification (then it is a miss).</summary>
    public string? Finish()
    {
        try
        {
            if (_read is not null && (_failed || !_disk!.Pool.EndRead(_read))) return null;
            return _cache.CountHit(_tier);
        }
        finally
        {
            if (_owned) _memory!.Release();
        }
    }

    /// <summary>Lets go of a chunk not read to the end (the restore stopped): no verdict on its bytes. Returns null.</summary>
    public string? Abandon()
    {
        if (_owned) _memory!.Release();
        return null;
    }
}
