namespace OrtKvTier.Server;

/// <summary>The server's own settings (section <c>Server</c>); the model and cache are the <c>OrtKvTier</c> section.</summary>
public sealed class ServerOptions
{
    /// <summary>API keys and their tenants (see <see cref="Tenants"/>). Empty: no key is asked for and every request is one tenant.</summary>
    public List<ApiKey> ApiKeys { get; set; } = [];

    /// <summary>
    /// Generations running at once. Default: the batch's rows (<c>OrtKvTier:BatchRows</c>) when requests decode in a
    /// batch, else one per two cores, at least one. A running request may still wait inside the batch for KV memory
    /// (<c>OrtKvTier:BatchKvBytes</c>); the KV never exceeds it.
    /// </summary>
    public int? MaxConcurrent { get; set; }

    /// <summary><see cref="MaxConcurrent"/>, or its default for a server that batches (<paramref name="batchRows"/>) or not (null).</summary>
    public int RunningLimit(int? batchRows) => MaxConcurrent ?? batchRows ?? Math.Max(1, Environment.ProcessorCount / 2);

    /// <summary>Requests waiting for a generation slot; one more is answered 429 with Retry-After. Default 64.</summary>
    public int MaxQueued { get; set; } = 64;

    /// <summary>Seconds a 429 asks the client to wait. Default 1.</summary>
    public int RetryAfterSeconds { get; set; } = 1;

    /// <summary>The largest request body taken; a larger one is a 413 before it is read. Default 4 MiB (about a million tokens of text).</summary>
    public long MaxRequestBodyBytes { get; set; } = 4L << 20;

    /// <summary>
    /// Seconds a streamed answer waits for its client to take an event; then the connection is aborted and the generation
    /// stops (a client that stopped reading, or left unseen, never holds a slot). Default 30.
    /// </summary>
    public int StreamWriteTimeoutSeconds { get; set; } = 30;

    /// <summary>Responses kept for <c>previous_response_id</c> (per server, oldest dropped first). Default 1024.</summary>
    public int StoredResponses { get; set; } = 1024;
}
