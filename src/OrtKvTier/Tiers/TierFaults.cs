using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using OrtKvTier.Diagnostics;

namespace OrtKvTier.Tiers;

/// <summary>
/// Where tiers report a fault they degraded around (a tier turned read-only or off, a failed read or write): one
/// warning per tier and cause, logged and kept for the caller to show (<c>generate --json</c>'s
/// <c>cache.warnings</c>), and every occurrence counted (<c>ortkv.cache.tier_faults{tier,cause}</c>). Thread-safe.
/// </summary>
internal sealed class TierFaults(ILogger? logger)
{
    private readonly ConcurrentDictionary<(TierId Tier, string Cause), string> _first = new();

    /// <summary>The first warning of each tier and cause, in no particular order.</summary>
    public IReadOnlyList<string> Warnings => [.. _first.Values];

    /// <summary>Keeps the first warning of a tier and cause for the caller to show, where what it warns of is logged and counted elsewhere (damaged entries).</summary>
    public void Keep(TierId tier, string cause, string warning) => _first.TryAdd((tier, cause), warning);

    /// <summary>Records a fault: counted always, logged and kept the first time for its tier and cause.</summary>
    public void Report(TierId tier, string cause, string warning, Exception? exception = null)
    {
        KvCacheMetrics.FaultsDegradedAround.Add(1, KvCacheMetrics.Tier(tier.Name), new KeyValuePair<string, object?>("cause", cause));
        if (_first.TryAdd((tier, cause), warning)) logger?.LogWarning(exception, "Prefix cache, {Tier} tier: {Warning}", tier, warning);
    }
}
