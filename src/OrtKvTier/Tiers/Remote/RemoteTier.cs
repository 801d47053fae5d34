using OrtKvTier.Tensors;
using Microsoft.Extensions.Logging;
using OrtKvTier.Diagnostics;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using StackExchange.Redis;
using OrtKvTier.Cache;
using OrtKvTier.Keys;
using OrtKvTier.Security;

namespace OrtKvTier.Tiers.Remote;

/// <summary>
/// A tier on a Redis-compatible server shared by a fleet: chunk entries under
/// <c>namespace:fingerprint:chunk-tokens:key-id:chunk-key</c>, authenticated (and by default encrypted) like a slot,
/// with a time to live. Give it to
/// <see cref="PrefixCacheOptions.ExtraTiers"/>: reads come through on a local miss (and are promoted
/// into host memory and disk), writes go behind on the cache's writer thread, filtered by
/// <see cref="RemoteTierOptions.Admission"/>. A slow, absent or restarting server never fails a
/// request: operations time out quickly, repeated failures open a circuit breaker, and the local
/// tiers carry on. A foreign, truncated or tampered value is a miss and is deleted.
/// </summary>
public sealed class RemoteTier : IKvChunkTier
{
    private readonly RemoteTierOptions _options;
    private SlotPoolIdentity _identity;
    /// <summary>Encodes written chunks and decodes fetched ones for an encoded tier; null when exact.</summary>
    private KvCodec? _codec;
    private readonly ILogger? _logger;
    /// <summary>Connecting starts at construction and is waited for by the first operation, at most <see cref="_connectTimeout"/>.</summary>
    private readonly Task<ConnectionMultiplexer> _connecting;
    private readonly TimeSpan _connectTimeout;
    private CacheSecret? _secret;
    private string? _prefix;
    private readonly object _breakerGate = new();
    private int _consecutiveFailures;
    private long _openUntilTicks;
    private long _hits, _misses, _writes, _rejected, _failures, _damaged, _bytes, _refreshed;
    /// <summary>Plain sockets for restores (null over TLS or when turned off): the multiplexed connection reads too slowly for a restore.</summary>
    private readonly WireFetcher? _wire;

    /// <summary>Connects (in the background if the server is not up yet) for the cache's <paramref name="identity"/>.</summary>
    public RemoteTier(RemoteTierOptions options, SlotPoolIdentity identity, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(identity);
        options.Validate();
        _options = options;
        _identity = identity.Encoding == KvEncoding.Exact ? identity with { Encoding = options.Encoding } : identity;
        _codec = KvCodec.For(_identity.Encoding, _identity.Shape, _identity.ChunkTokens);
        _logger = logger;
        try
        {
            _secret = CacheKeys.Given(options.SecretKey);
        }
        catch (ArgumentException e) when (options.SecretKey is null)
        {
            // A malformed ORTKV_CACHE_KEY: the tier takes its cache's key (UseCacheSecret) instead of failing.
            _logger?.LogWarning("Remote tier: {Reason} The tier uses its cache's key instead.", e.Message);
        }
        var config = ConfigurationOptions.Parse(RemoteTierOptions.ConfigurationFor(options.Connection));
        config.AbortOnConnectFail = false;
        int timeout = (int)Math.Max(1, options.OperationTimeout.TotalMilliseconds);
        // Connecting happens once, at open: give a loaded machine a second even when operations must be quick.
        config.ConnectTimeout = Math.Max(timeout, 1000);
        config.SyncTimeout = timeout;
        config.AsyncTimeout = timeout;
        config.ConnectRetry = 0;
        _connectTimeout = TimeSpan.FromMilliseconds(config.ConnectTimeout);
        // In the background: a process whose server is down pays at most one connect timeout, on its first
        // operation, and none at all if it never needs the server. The client keeps reconnecting behind it.
        _connecting = ConnectionMultiplexer.ConnectAsync(config);
        if (options.SocketsPerServer > 0 && WireFetcher.Supports(config))
            _wire = new WireFetcher(config, options.SocketsPerServer, options.OperationTimeout, options.FetchDeadline, options.MaxValueBytes);
    }

    /// <summary>For a cache of <paramref name="model"/> with chunks of <paramref name="chunkTokens"/> (PrefixCacheOptions.ChunkTokens).</summary>
    public static RemoteTier For(KvModel model, int chunkTokens, RemoteTierOptions options, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        return new RemoteTier(options, SlotPoolIdentity.For(model.Fingerprint, model.Layout, chunkTokens), logger);
    }

    /// <inheritdoc />
    public TierId Id => TierId.Remote;

    /// <inheritdoc />
    public TierCost Cost => TierCost.NetworkRoundTrip;

    /// <inheritdoc />
    public KvEncoding Encoding => _identity.Encoding;

    /// <summary>The model missed the quality gate of this tier's encoding: before its first use, the tier stores exact values instead.</summary>
    void IKvChunkTier.FallBackToExact()
    {
        _identity = _identity with { Encoding = KvEncoding.Exact };
        _codec = null;
        _prefix = null;
    }

    /// <summary>Waits until the client is connected (tests: a loaded machine may take longer than the connect timeout the tier allows itself).</summary>
    internal bool WaitUntilConnected(TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        if (!_connecting.Wait(timeout)) return false;
        // The first attempt may have timed out on a busy machine: the client keeps reconnecting behind it.
        while (!_connecting.Result.IsConnected && clock.Elapsed < timeout) Thread.Sleep(20);
        return _connecting.Result.IsConnected;
    }

    /// <summary>Whether the circuit breaker is open (the server is being left alone).</summary>
    public bool IsBroken => DateTime.UtcNow.Ticks < Interlocked.Read(ref _openUntilTicks);

    /// <summary>Operations that failed (timeouts, refused connections) since creation.</summary>
    public long Failures => Interlocked.Read(ref _failures);

    /// <summary>Values found foreign, truncated or tampered with (each deleted) since creation.</summary>
    public long Damaged => Interlocked.Read(ref _damaged);

    /// <inheritdoc />
    public bool Contains(ChunkKey key) => Guarded(db => db.KeyExists(Key(key)), false);

    /// <inheritdoc />
    public bool TryRead(ChunkKey key, ReadOnlySpan<int> tokens, Span<byte> destination)
    {
        if (!Accept(key, tokens, Present(Guarded(db => db.StringGet(Key(key)), RedisValue.Null)), destination)) return false;
        RefreshTimeToLive([key]);
        return true;
    }

    /// <summary>A value that came back, or null for none (a missing key, which is not an empty value).</summary>
    private static ReadOnlyMemory<byte>? Present(RedisValue value) => value.IsNull ? default(ReadOnlyMemory<byte>?) : (ReadOnlyMemory<byte>)value;

    /// <summary>
    /// Checks a fetched value and opens its payload into <paramref name="destination"/> (where it was received already
    /// when <paramref name="payloadInPlace"/>: <paramref name="value"/> is then the header); a bad value is counted,
    /// logged and deleted.
    /// </summary>
    private bool Accept(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlyMemory<byte>? value, Span<byte> destination, bool payloadInPlace = false)
    {
        if (value is not { } bytes)
        {
            Interlocked.Increment(ref _misses);
            return false;
        }
        var failure = bytes.Length > _options.MaxValueBytes ? $"{bytes.Length} bytes is over MaxValueBytes"
            : _codec is { } codec ? AcceptEncoded(codec, key, tokens, bytes.Span, destination, payloadInPlace)
            : payloadInPlace ? RemoteEntry.DecodeInPlace(bytes.Span, _identity, Secret, key, tokens, destination)
            : RemoteEntry.Decode(bytes.Span, _identity, Secret, key, tokens, destination);
        if (failure is null)
        {
            Interlocked.Increment(ref _hits);
            return true;
        }
        Interlocked.Increment(ref _misses);
        Interlocked.Increment(ref _damaged);
        KvCacheMetrics.DamagedChunks.Add(1, KvCacheMetrics.Tier(Id.Name));
        _logger?.LogWarning("Remote tier: the value for chunk {Key} is a miss: {Reason}. It was deleted.", key, failure);
        Guarded(db => db.KeyDelete(Key(key)), false);
        return false;
    }

    /// <summary>
    /// An encoded value: opened (authenticated) where its payload is (the front of <paramref name="destination"/> when it was
    /// received there), then decoded into <paramref name="destination"/>. Null when intact; otherwise why not.
    /// </summary>
    private unsafe string? AcceptEncoded(KvCodec codec, ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> value, Span<byte> destination, bool payloadInPlace)
    {
        if (destination.Length != codec.ExactBytes) return $"a destination of {destination.Length} bytes, expected {codec.ExactBytes}";
        var staging = System.Buffers.ArrayPool<byte>.Shared.Rent(checked((int)codec.EncodedBytes));
        try
        {
            var encoded = staging.AsSpan(0, (int)codec.EncodedBytes);
            if (payloadInPlace) destination[..encoded.Length].CopyTo(encoded);
            var failure = payloadInPlace ? RemoteEntry.DecodeInPlace(value, _identity, Secret, key, tokens, encoded)
                : RemoteEntry.Decode(value, _identity, Secret, key, tokens, encoded);
            if (failure is not null) return failure;
            fixed (byte* target = destination) codec.Decode(encoded, PayloadScatter.Contiguous(target, destination.Length));
            return null;
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(staging);
        }
    }

    /// <summary>
    /// Reads several chunks into <paramref name="destinations"/>; true where one came back intact, and
    /// <paramref name="arrived"/>(i) as soon as destination i holds it. Every GET is sent at once (pipelined over a few
    /// sockets per server; on a cluster each goes to its key's node, so a chain's chunks need not share one); each
    /// payload is received straight into its destination and verified (and decrypted) there as it arrives, while the
    /// later ones are still on the wire. Hits refresh their entries' time to live.
    /// </summary>
    public bool[] TryReadMany(IReadOnlyList<ChunkKey> keys, IReadOnlyList<int[]> tokens, IReadOnlyList<Memory<byte>> destinations, Action<int>? arrived = null)
    {
        var found = new bool[keys.Count];
        if (keys.Count == 0) return found;
        void Settle(int i, bool intact)
        {
            found[i] = intact;
            if (intact) arrived?.Invoke(i);
        }
        if (_wire is { } wire)
        {
            // Each key to the server its slot lives on (the one server, or a cluster node); a node that is down is a miss.
            string[] names = [.. keys.Select(Key)];
            var (failed, redirected) = Guarded(db => wire.Fetch(names,
                i => db.Multiplexer.GetServer((RedisKey)names[i]) is { IsConnected: true } server ? server.EndPoint : null,
                i => new ValueTarget(StoredFormats.RemoteValue.Length(tokens[i].Length), _codec is { } codec ? destinations[i][..(int)codec.EncodedBytes] : destinations[i]),
                (i, value, inPlace) => Settle(i, Accept(keys[i], tokens[i], value, destinations[i].Span, inPlace))), (-1, []));
            if (failed < 0) Interlocked.Add(ref _misses, keys.Count);
            else if (failed > 0) Fail(new IOException($"{failed} connection(s) failed while fetching {keys.Count} chunks"));
            // Slots that moved: the client follows the redirection (and learns the new map for the next fetch).
            foreach (int i in redirected) Settle(i, Accept(keys[i], tokens[i], Present(Guarded(db => db.StringGet(names[i]), RedisValue.Null)), destinations[i].Span));
            RefreshTimeToLive([.. keys.Where((_, i) => found[i])]);
            return found;
        }
        // Over TLS: one waiting thread instead of one per chunk (synchronous calls from many pool threads at once can
        // starve the client's own reader of threads).
        var pending = Guarded(db => keys.Select(k => db.StringGetLeaseAsync(Key(k))).ToArray(), null);
        if (pending is null)
        {
            Interlocked.Add(ref _misses, keys.Count);
            return found;
        }
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < keys.Count; i++)
        {
            var arriving = pending[i];
            var left = _options.FetchDeadline - deadline.Elapsed;
            bool came = Guarded(_ => left > TimeSpan.Zero && arriving.Wait(left) ? true : throw new TimeoutException($"the fetch of {keys.Count} values took longer than {_options.FetchDeadline.TotalMilliseconds:F0} ms"), false);
            if (!came)
            {
                // Given up on: its buffer goes back to the pool whenever it comes.
                arriving.ContinueWith(t => t.Result?.Dispose(), CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
                Interlocked.Increment(ref _misses);
                continue;
            }
            using var value = arriving.Result;
            Settle(i, Accept(keys[i], tokens[i], value is null ? default(ReadOnlyMemory<byte>?) : value.Memory, destinations[i].Span));
        }
        RefreshTimeToLive([.. keys.Where((_, i) => found[i])]);
        return found;
    }

    /// <inheritdoc />
    /// <remarks>Refreshes the entries' time to live (fire and forget, pipelined): chunks in use stay on the server.</remarks>
    public void Touch(IReadOnlyList<ChunkKey> keys) => RefreshTimeToLive(keys);

    private void RefreshTimeToLive(IReadOnlyList<ChunkKey> keys)
    {
        if (keys.Count == 0 || IsBroken) return;
        Guarded(db =>
        {
            foreach (var key in keys) db.KeyExpire(Key(key), _options.TimeToLive, CommandFlags.FireAndForget);
            return true;
        }, false);
        Interlocked.Add(ref _refreshed, keys.Count);
    }

    /// <summary>Entries whose time to live was refreshed by a hit (here or in a tier above) since creation.</summary>
    public long Refreshed => Interlocked.Read(ref _refreshed);

    /// <inheritdoc />
    public bool Write(ChunkKey key, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload)
    {
        if (IsBroken) return false;
        if (_options.Admission == RemoteAdmission.SeenTwice)
        {
            var seen = Prefix + "seen:" + key;
            long count = Guarded(db =>
            {
                long n = db.StringIncrement(seen);
                if (n == 1) db.KeyExpire(seen, _options.TimeToLive);
                return n;
            }, 0L);
            if (count < 2)
            {
                Interlocked.Increment(ref _rejected);
                return false;
            }
        }
        byte[] value;
        if (_codec is { } codec)
        {
            var encoded = new byte[codec.EncodedBytes];
            if (payload.Length != codec.ExactBytes || !codec.Encode(payload, encoded))
            {
                Interlocked.Increment(ref _rejected); // not a whole chunk, or values the encoding cannot hold (NaN, infinity)
                return false;
            }
            value = RemoteEntry.Encode(_identity, Secret, _options.Encrypt, key, tokens, encoded);
        }
        else value = RemoteEntry.Encode(_identity, Secret, _options.Encrypt, key, tokens, payload);
        if (value.LongLength > _options.MaxValueBytes)
        {
            Interlocked.Increment(ref _rejected);
            return false;
        }
        bool stored = Guarded(db => db.StringSet(Key(key), value, _options.TimeToLive), false);
        if (stored)
        {
            Interlocked.Increment(ref _writes);
            Interlocked.Add(ref _bytes, _codec?.EncodedBytes ?? payload.Length);
        }
        return stored;
    }

    /// <inheritdoc />
    public bool Remove(ChunkKey key) => Guarded(db => db.KeyDelete(Key(key)), false);

    /// <inheritdoc />
    public KvTierStats GetStats() => new()
    {
        Name = Id.Name, Entries = Interlocked.Read(ref _writes), Bytes = Interlocked.Read(ref _bytes), CapacityBytes = 0,
        Hits = Interlocked.Read(ref _hits), Misses = Interlocked.Read(ref _misses), Writes = Interlocked.Read(ref _writes), Evictions = 0,
    };

    /// <inheritdoc />
    public void Dispose()
    {
        _wire?.Dispose();
        _connecting.ContinueWith(t => t.Result.Dispose(), CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
    }

    /// <summary>Connects now (the client, and the sockets restores fetch over, to every server) instead of on first use; false when the server cannot be reached.</summary>
    internal bool Connect() => Guarded(db =>
    {
        foreach (var server in db.Multiplexer.GetServers().Where(s => s.IsConnected)) _wire?.Open(server.EndPoint);
        return true;
    }, false);

    /// <summary>The server key of a chunk.</summary>
    public string Key(ChunkKey key) => Prefix + key;

    /// <summary>
    /// The secret of the cache this tier serves, when the options and the environment gave none: the fleet shares
    /// entries when its processes share the key (<see cref="RemoteTierOptions.SecretKey"/> or <c>ORTKV_CACHE_KEY</c>).
    /// </summary>
    void IKvChunkTier.UseCacheSecret(CacheSecret secret) => Interlocked.CompareExchange(ref _secret, secret, null);

    /// <summary>The key that authenticates values: given, adopted from the cache, or (standalone, with none) this process's own.</summary>
    private CacheSecret Secret
    {
        get
        {
            if (Volatile.Read(ref _secret) is { } secret) return secret;
            if (Interlocked.CompareExchange(ref _secret, CacheSecret.CreateRandom(), null) is null)
                _logger?.LogWarning("Remote tier: no cache key given (RemoteTierOptions.SecretKey, ${Variable}); values this process writes are readable by itself only.", CacheKeys.EnvironmentVariable);
            return _secret!;
        }
    }

    /// <summary>
    /// Every key of this tier starts with it; the key id keeps processes with different keys apart and the format version
    /// builds of different versions (during a rolling upgrade), so none deletes the other's values as damaged.
    /// </summary>
    private string Prefix => _prefix ??= $"{_options.Namespace}:v{RemoteEntry.Version}:{_identity.Fingerprint}:{_identity.ChunkTokens}:{(_identity.Encoding == KvEncoding.Exact ? "" : _identity.Encoding.Name() + ":")}{Secret.KeyId}:";

    /// <summary>Runs a server call unless the circuit is open; a failure returns <paramref name="fallback"/> and counts towards opening it.</summary>
    private T Guarded<T>(Func<IDatabase, T> call, T fallback)
    {
        if (IsBroken) return fallback;
        try
        {
            if (!_connecting.Wait(_connectTimeout) || !_connecting.Result.IsConnected)
            {
                Break($"cannot reach the server within {_connectTimeout.TotalMilliseconds:F0} ms");
                return fallback;
            }
            var result = call(_connecting.Result.GetDatabase());
            Volatile.Write(ref _consecutiveFailures, 0);
            return result;
        }
        catch (Exception e) when (e is RedisException or TimeoutException or ObjectDisposedException or AggregateException)
        {
            // A refusal by the server (out of memory, a read-only replica, no permission) is said once per kind.
            if (e is RedisServerException refused && _refusalsSaid.TryAdd(refused.Message.Split(' ')[0], 0))
                _logger?.LogWarning("Remote tier {Connection}: the server refused an operation: {Reason}. Values are not stored there while it does.", _options.Connection, refused.Message);
            Fail(e);
            return fallback;
        }
    }

    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, byte> _refusalsSaid = new(StringComparer.Ordinal);

    /// <summary>Counts a failed operation; enough in a row open the circuit.</summary>
    private void Fail(Exception e)
    {
        Interlocked.Increment(ref _failures);
        lock (_breakerGate)
            if (++_consecutiveFailures >= _options.FailuresToBreak) Break($"{_options.FailuresToBreak} operations failed in a row ({e.Message})");
    }

    /// <summary>Opens the circuit: the server is left alone for <see cref="RemoteTierOptions.BreakDuration"/>; local tiers carry on.</summary>
    private void Break(string why)
    {
        Interlocked.Increment(ref _failures);
        lock (_breakerGate)
        {
            if (IsBroken) return;
            Interlocked.Exchange(ref _openUntilTicks, DateTime.UtcNow.Add(_options.BreakDuration).Ticks);
            _consecutiveFailures = 0;
        }
        _logger?.LogWarning("Remote tier {Connection}: {Why}; leaving it alone for {Seconds:F1} s. Local tiers carry on.", _options.Connection, why, _options.BreakDuration.TotalSeconds);
    }
}
