using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace OrtKvTier.Diagnostics;

/// <summary>
/// The library's instruments on the <c>OrtKvTier</c> meter (listen with a <see cref="MeterListener"/>,
/// OpenTelemetry or <c>dotnet-counters monitor --counters OrtKvTier</c>). Durations are in milliseconds.
/// </summary>
internal static class KvCacheMetrics
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "OrtKvTier";

    private static readonly Meter Meter = new(MeterName, typeof(KvCacheMetrics).Assembly.GetName().Version?.ToString());

    /// <summary>
    /// Spans (also named <c>OrtKvTier</c>): <c>ortkv.restore</c> (a request's restore, with <c>ortkv.lookup</c> inside it),
    /// <c>ortkv.prefill</c> (the model run over the tokens not restored) and <c>ortkv.capture</c> (new chunks stored).
    /// </summary>
    public static readonly ActivitySource Activities = new(MeterName, typeof(KvCacheMetrics).Assembly.GetName().Version?.ToString());

    /// <summary>Prefix lookups, tagged <c>result</c> = hit | miss.</summary>
    public static readonly Counter<long> Lookups = Meter.CreateCounter<long>("ortkv.cache.lookups", "{lookup}", "Prefix lookups by result.");
    /// <summary>Chunks restored, tagged <c>tier</c>.</summary>
    public static readonly Counter<long> ChunkHits = Meter.CreateCounter<long>("ortkv.cache.chunk_hits", "{chunk}", "Chunks restored, by the tier that held them.");
    /// <summary>Chunks found damaged, foreign or rewritten (each a miss), tagged <c>tier</c>.</summary>
    public static readonly Counter<long> DamagedChunks = Meter.CreateCounter<long>("ortkv.cache.damaged_chunks", "{chunk}", "Chunks whose bytes failed verification and were dropped.");
    /// <summary>Prompt tokens restored instead of computed.</summary>
    public static readonly Counter<long> RestoredTokens = Meter.CreateCounter<long>("ortkv.cache.restored_tokens", "{token}", "Prompt tokens restored from the cache.");
    /// <summary>Prompt tokens computed by prefill.</summary>
    public static readonly Counter<long> PrefillTokens = Meter.CreateCounter<long>("ortkv.generation.prefill_tokens", "{token}", "Prompt tokens computed by the model.");
    /// <summary>Bytes read from a tier, tagged <c>tier</c>.</summary>
    public static readonly Counter<long> BytesRead = Meter.CreateCounter<long>("ortkv.cache.bytes_read", "By", "Chunk bytes read, by tier and encoding (as stored: an int8 chunk counts its encoded bytes).");
    /// <summary>Bytes written to a tier, tagged <c>tier</c>.</summary>
    public static readonly Counter<long> BytesWritten = Meter.CreateCounter<long>("ortkv.cache.bytes_written", "By", "Chunk bytes written, by tier.");
    /// <summary>Faults a tier degraded around (it turned read-only or off, a read or write failed), tagged <c>tier</c> and <c>cause</c>.</summary>
    public static readonly Counter<long> FaultsDegradedAround = Meter.CreateCounter<long>("ortkv.cache.tier_faults", "{fault}", "Faults a tier degraded around, by tier and cause.");
    /// <summary>Chunks evicted from a tier, tagged <c>tier</c>.</summary>
    public static readonly Counter<long> Evictions = Meter.CreateCounter<long>("ortkv.cache.evictions", "{chunk}", "Chunks evicted to make room, by tier.");
    /// <summary>Time to find the cached chain and bring its chunks into host memory.</summary>
    public static readonly Histogram<double> LookupDuration = Meter.CreateHistogram<double>("ortkv.cache.lookup.duration", "ms", "Time to find the longest cached chain and read its chunks.");
    /// <summary>Time to copy the chain into the past tensors.</summary>
    public static readonly Histogram<double> RestoreDuration = Meter.CreateHistogram<double>("ortkv.cache.restore.duration", "ms", "Time to copy restored chunks into the model's past tensors.");
    /// <summary>Time to capture new chunks after a run.</summary>
    public static readonly Histogram<double> CaptureDuration = Meter.CreateHistogram<double>("ortkv.cache.capture.duration", "ms", "Time to copy new chunks out of the present tensors.");
    /// <summary>Time of the prompt run that follows a restore.</summary>
    public static readonly Histogram<double> PrefillDuration = Meter.CreateHistogram<double>("ortkv.generation.prefill.duration", "ms", "Time to run the prompt tokens not restored.");
    /// <summary>Time to first token of a generation.</summary>
    public static readonly Histogram<double> TimeToFirstToken = Meter.CreateHistogram<double>("ortkv.generation.ttft", "ms", "Time from request to first generated token.");

    internal static KeyValuePair<string, object?> Tier(string name) => new("tier", name);

    internal static double Milliseconds(long startTimestamp) => Stopwatch.GetElapsedTime(startTimestamp).TotalMilliseconds;
}
