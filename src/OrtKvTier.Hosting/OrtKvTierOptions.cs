using OrtKvTier.Tensors;
using OrtKvTier.Model;

namespace OrtKvTier.Hosting;

/// <summary>
/// What <see cref="OrtKvTierServiceCollectionExtensions.AddOrtKvTier(Microsoft.Extensions.DependencyInjection.IServiceCollection, Action{OrtKvTierOptions})"/>
/// registers, bindable from configuration (section <see cref="SectionName"/>; sizes in bytes).
/// </summary>
public sealed class OrtKvTierOptions
{
    /// <summary>The configuration section read by the <c>IConfiguration</c> overload.</summary>
    public const string SectionName = "OrtKvTier";

    /// <summary>The GenAI model folder (required).</summary>
    public string ModelFolder { get; set; } = "";

    /// <summary>Where the model runs. Default CPU.</summary>
    public ExecutionDevice Device { get; set; } = ExecutionDevice.Cpu;

    /// <summary>Whether requests use the prefix cache. Default true.</summary>
    public bool CacheEnabled { get; set; } = true;

    /// <summary>The disk tier's root directory; null: the per-user default; "" or <see cref="MemoryOnly"/>: no disk tier.</summary>
    public string? CacheDirectory { get; set; }

    /// <summary>Keep the cache in memory only (plus the remote tier, if any). Default false.</summary>
    public bool MemoryOnly { get; set; }

    /// <summary>Tokens per chunk. Default 32.</summary>
    public int ChunkTokens { get; set; } = Cache.PrefixCacheOptions.DefaultChunkTokens;

    /// <summary>Host memory for cached chunks, in bytes. Default 1 GiB.</summary>
    public long HostCacheBytes { get; set; } = 1L << 30;

    /// <summary>The disk pool's capacity, in bytes. Default 1 GiB.</summary>
    public long DiskCacheBytes { get; set; } = 1L << 30;

    /// <summary>Device memory for the device tier (CUDA), in bytes. Default 0 (off).</summary>
    public long DeviceCacheBytes { get; set; }

    /// <summary>The cache key, hex or base64 (at least 16 bytes); null: <c>ORTKV_CACHE_KEY</c>, else the cache directory's key file.</summary>
    public string? SecretKey { get; set; }

    /// <summary>Encrypt chunks written to disk. Default false (remote values are encrypted by default).</summary>
    public bool EncryptAtRest { get; set; }

    /// <summary>Share the cache directory with its group on purpose (see the README). Default false.</summary>
    public bool ShareWithGroup { get; set; }

    /// <summary>Restore every prefix found, even where computing it is expected to be faster (see <c>PrefixCacheOptions.AlwaysRestore</c>). Default false.</summary>
    public bool AlwaysRestore { get; set; }

    /// <summary>How the disk stores KV: <c>Exact</c> (default), <c>Int8</c> or <c>Int4</c>, used once the model passes the quality gate (see <c>PrefixCacheOptions.DiskEncoding</c>).</summary>
    public KvEncoding DiskEncoding { get; set; } = KvEncoding.Exact;

    /// <summary>How remote values store KV (see <c>RemoteTierOptions.Encoding</c>). Default <c>Exact</c>.</summary>
    public KvEncoding RemoteEncoding { get; set; } = KvEncoding.Exact;

    /// <summary>A salt for the whole cache (tenants: per request, see <c>KvChatClient.TenantProperty</c>).</summary>
    public string? Salt { get; set; }

    /// <summary>A Redis server or cluster (<c>host:port</c>, <c>redis://host:port</c>, or nodes comma-separated); null: no remote tier.</summary>
    public string? Remote { get; set; }

    /// <summary>The remote tier's key prefix. Default <c>ortkv</c>.</summary>
    public string RemoteNamespace { get; set; } = "ortkv";

    /// <summary>Most tokens an answer gets when the request sets none. Default 256.</summary>
    public int DefaultMaxOutputTokens { get; set; } = 256;

    /// <summary>
    /// Requests decoding together in one batch (<see cref="Generation.GenerationBatch"/>); 1: each request runs its own loop.
    /// Default 16. A model on a device always runs one loop per request.
    /// </summary>
    public int BatchRows { get; set; } = new Generation.GenerationBatchOptions().MaxRows;

    /// <summary>Host memory the batch's KV may take, in bytes (each request reserves its prompt plus its most output tokens). Default 1 GiB.</summary>
    public long BatchKvBytes { get; set; } = new Generation.GenerationBatchOptions().MaxKvBytes;

    /// <summary>Prompt tokens run between two decode steps of the batch at most. Default 256.</summary>
    public int BatchPrefillTokens { get; set; } = new Generation.GenerationBatchOptions().MaxPrefillTokensPerStep;

    /// <summary>Whether requests join a batch: more than one row, on the CPU.</summary>
    public bool Batching => BatchRows > 1 && Device == ExecutionDevice.Cpu;

    /// <summary>The model id in responses and metadata; null: the model folder's name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Throws naming the setting that is missing or out of range.</summary>
    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(ModelFolder))
            throw new ArgumentException($"{SectionName}:{nameof(ModelFolder)} is required: the GenAI model folder (genai_config.json, model.onnx, tokenizer).", nameof(ModelFolder));
        if (ChunkTokens is < 1 or > 65536) throw new ArgumentOutOfRangeException(nameof(ChunkTokens), ChunkTokens, $"{SectionName}:{nameof(ChunkTokens)} must be between 1 and 65536.");
        ArgumentOutOfRangeException.ThrowIfNegative(HostCacheBytes, nameof(HostCacheBytes));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(DiskCacheBytes, nameof(DiskCacheBytes));
        ArgumentOutOfRangeException.ThrowIfNegative(DeviceCacheBytes, nameof(DeviceCacheBytes));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(DefaultMaxOutputTokens, nameof(DefaultMaxOutputTokens));
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(BatchRows, nameof(BatchRows));
        if (Batching) BatchOptions.Validate();
    }

    /// <summary>The batch these settings ask for.</summary>
    public Generation.GenerationBatchOptions BatchOptions => new()
    {
        MaxRows = BatchRows, MaxKvBytes = BatchKvBytes, MaxPrefillTokensPerStep = BatchPrefillTokens,
    };
}
