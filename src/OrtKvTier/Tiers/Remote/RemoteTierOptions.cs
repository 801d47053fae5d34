using OrtKvTier.Tensors;
namespace OrtKvTier.Tiers.Remote;

/// <summary>Which chunks a process uploads to the remote tier.</summary>
public enum RemoteAdmission
{
    /// <summary>Every chunk this process computes (fine for a few instances or a big server).</summary>
    Always,
    /// <summary>
    /// A chunk is uploaded once the fleet has computed it twice: each offer bumps a small counter on
    /// the server, and the second offer (from any instance) uploads the bytes. One-off prompts never
    /// cross the network; shared system prompts and documents do.
    /// </summary>
    SeenTwice,
}

/// <summary>How to reach and use a Redis-compatible server (Redis, Valkey) as a shared chunk tier.</summary>
public sealed record RemoteTierOptions
{
    /// <summary>StackExchange.Redis configuration, e.g. <c>localhost:6379</c> or <c>redis://host:port</c>.</summary>
    public required string Connection { get; init; }

    /// <summary>Prefix of every key, so several apps can share a server. Default <c>ortkv</c>.</summary>
    public string Namespace { get; init; } = "ortkv";

    /// <summary>How long an entry lives after it is written. Default 1 day.</summary>
    public TimeSpan TimeToLive { get; init; } = TimeSpan.FromDays(1);

    /// <summary>Which chunks are uploaded. Default <see cref="RemoteAdmission.SeenTwice"/>.</summary>
    public RemoteAdmission Admission { get; init; } = RemoteAdmission.SeenTwice;

    /// <summary>Largest value uploaded or accepted, in bytes. Default 64 MiB.</summary>
    public long MaxValueBytes { get; init; } = 64L << 20;

    /// <summary>Time allowed for one operation before it counts as a failure (connecting gets at least 1 s). Default 250 ms.</summary>
    public TimeSpan OperationTimeout { get; init; } = TimeSpan.FromMilliseconds(250);

    /// <summary>
    /// The most one restore's fetch of values may take, all of them together (a server that trickles bytes or answers
    /// nonsense costs at most this, then its keys are misses); never less than <see cref="OperationTimeout"/>. Default 1 s.
    /// </summary>
    public TimeSpan FetchTimeout { get; init; } = TimeSpan.FromSeconds(1);

    internal TimeSpan FetchDeadline => FetchTimeout > OperationTimeout ? FetchTimeout : OperationTimeout;

    /// <summary>Consecutive failures that open the circuit (no server calls until <see cref="BreakDuration"/> passes). Default 3.</summary>
    public int FailuresToBreak { get; init; } = 3;

    /// <summary>How long an open circuit stays open. Default 5 s.</summary>
    public TimeSpan BreakDuration { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The secret key that authenticates values (at least 16 bytes; 32 random bytes recommended): every process of a
    /// fleet that shares entries gives the same one. Null: <c>ORTKV_CACHE_KEY</c>, else the key of the prefix cache
    /// this tier serves. Values under another key are misses.
    /// </summary>
    public byte[]? SecretKey { get; init; }

    /// <summary>Encrypt the payload and token ids of values (AES-CTR under per-entry keys), so the server and whoever reads it learn nothing about prompts. Default true.</summary>
    public bool Encrypt { get; init; } = true;

    /// <summary>
    /// How values store KV. Default <see cref="KvEncoding.Exact"/>. <see cref="KvEncoding.Int8"/> moves about half an fp16
    /// model's bytes over the wire and holds twice the prefixes in the server's memory; the cache uses it only once the
    /// model passes its quality gate (<c>PrefixCacheOptions.QualityGate</c>), else the tier stays exact and the cache warns.
    /// Values of each encoding live under keys of their own.
    /// </summary>
    public KvEncoding Encoding { get; init; } = KvEncoding.Exact;

    /// <summary>
    /// Plain sockets per server that restores fetch over (pipelined GETs, read in parallel). 0 reads through the
    /// client's one multiplexed connection, as TLS connections always do. Default 4.
    /// </summary>
    public int SocketsPerServer { get; init; } = 4;

    /// <summary>Parses <c>redis://host:port</c> (or <c>host:port</c>) into a StackExchange.Redis configuration string.</summary>
    public static string ConfigurationFor(string connection)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(connection);
        if (!connection.Contains("://", StringComparison.Ordinal)) return connection;
        if (!Uri.TryCreate(connection, UriKind.Absolute, out var uri) || uri.Scheme is not ("redis" or "valkey"))
            throw new ArgumentException($"Expected redis://host:port (or host:port); got '{connection}'.", nameof(connection));
        return $"{uri.Host}:{(uri.IsDefaultPort || uri.Port < 0 ? 6379 : uri.Port)}";
    }

    /// <summary>Throws when a setting is out of range, naming it.</summary>
    public void Validate()
    {
        ConfigurationFor(Connection);
        ArgumentException.ThrowIfNullOrWhiteSpace(Namespace);
        if (TimeToLive <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(TimeToLive), TimeToLive, "TimeToLive must be positive.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(MaxValueBytes);
        if (!Enum.IsDefined(Encoding)) throw new ArgumentOutOfRangeException(nameof(Encoding), Encoding, "Encoding must be exact, int8 or int4.");
        if (SecretKey is { Length: < Security.CacheSecret.MinKeyBytes })
            throw new ArgumentException($"SecretKey needs at least {Security.CacheSecret.MinKeyBytes} bytes (32 random bytes recommended); got {SecretKey.Length}.", nameof(SecretKey));
        if (OperationTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(OperationTimeout), OperationTimeout, "OperationTimeout must be positive.");
        if (FetchTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(FetchTimeout), FetchTimeout, "FetchTimeout must be positive.");
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(FailuresToBreak);
        ArgumentOutOfRangeException.ThrowIfNegative(SocketsPerServer);
        if (BreakDuration < TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(BreakDuration), BreakDuration, "BreakDuration must not be negative.");
    }
}
