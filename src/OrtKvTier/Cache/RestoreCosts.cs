using System.Collections.Concurrent;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// What restoring costs on this machine, measured, and the decision it makes with what running the model costs
/// (<see cref="RunCosts"/>, every run of the model's generators): a found prefix is restored only when restoring it and
/// running the rest of the prompt after it is expected to take less than running the prompt without it, so a hit is never
/// slower than a miss (small prefixes, tiny models). Restores feed it: preparing the past, then each chunk's placement by
/// tier (medians of recent ones). While a cost is not measured yet it restores, and measures; and every
/// <see cref="ExploreEvery"/>th time it would compute, it restores anyway, so costs measured at a slow moment do not keep
/// it computing. One per cache identity in a process, shared by its caches. Thread-safe.
/// </summary>
internal sealed class RestoreCosts
{
    private const int Window = 31;
    private static readonly ConcurrentDictionary<SlotPoolIdentity, RestoreCosts> ByIdentity = new();

    private readonly object _gate = new();
    private readonly Samples _beginMs = new(Window);
    private readonly Dictionary<TierId, Samples> _chunkMs = [];

    /// <summary>The costs measured for <paramref name="identity"/> in this process.</summary>
    public static RestoreCosts For(SlotPoolIdentity identity) => ByIdentity.GetOrAdd(identity, _ => new RestoreCosts());

    /// <summary>One decision to compute in this many restores anyway (and measures them).</summary>
    public const int ExploreEvery = 16;

    private int _computedInARow;

    /// <summary>Set by the first cache of this identity that starts the warm-up probe (once per process).</summary>
    public bool WarmUpStarted;

    /// <summary>A restore of chunks from <paramref name="tiers"/>: preparing the destination took <paramref name="beginMs"/>, placing the chunks <paramref name="placeMs"/>.</summary>
    public void RecordRestore(IReadOnlyList<TierId> tiers, double beginMs, double placeMs)
    {
        if (tiers.Count == 0) return;
        lock (_gate)
        {
            _computedInARow = 0;
            _beginMs.Add(beginMs);
            if (tiers.All(t => t == tiers[0])) ChunkSamples(tiers[0]).Add(placeMs / tiers.Count);
        }
    }

    /// <summary>
    /// Null when restoring <paramref name="restoredTokens"/> tokens in chunks from <paramref name="tiers"/> of a prompt of
    /// <paramref name="promptTokens"/> (of which <paramref name="computedTokens"/> are computed already) is expected to beat
    /// computing them (or when a cost is not known yet: then it restores, and measures); otherwise why not, with both estimates.
    /// </summary>
    public string? WhyCompute(IReadOnlyList<TierId> tiers, int restoredTokens, int promptTokens, int computedTokens, RunCosts runs) =>
        WhyCompute(Estimate(tiers, restoredTokens, promptTokens, computedTokens, runs), tiers, restoredTokens, promptTokens, computedTokens);

    /// <summary>The decision for an <paramref name="estimate"/> made already (<see cref="Estimate"/>).</summary>
    public string? WhyCompute((double HitMs, double MissMs)? estimate, IReadOnlyList<TierId> tiers, int restoredTokens, int promptTokens, int computedTokens)
    {
        if (estimate is not var (hitMs, missMs) || hitMs < missMs) return null;
        lock (_gate)
            if (++_computedInARow >= ExploreEvery)
            {
                _computedInARow = 0;
                return null; // measure a restore again now and then
            }
        return $"restoring {restoredTokens} tokens ({tiers.Count} chunks from {string.Join('+', tiers.Distinct())}) and running the other {promptTokens - restoredTokens} " +
            $"would take about {hitMs:F2} ms, running the prompt's {promptTokens - computedTokens} tokens about {missMs:F2} ms (measured on this machine)";
    }

    /// <summary>The expected milliseconds of the hit (restore, then the rest of the prompt) and of the miss, or null while a cost is unknown.</summary>
    public (double HitMs, double MissMs)? Estimate(IReadOnlyList<TierId> tiers, int restoredTokens, int promptTokens, int computedTokens, RunCosts runs)
    {
        if (runs.Estimate(promptTokens - restoredTokens, afterPast: true) is not { } rest ||
            runs.Estimate(promptTokens - computedTokens, afterPast: computedTokens > 0) is not { } miss) return null;
        lock (_gate)
        {
            if (_beginMs.Median is not { } restore) return null;
            foreach (var tier in tiers)
                if (_chunkMs.TryGetValue(tier, out var samples) && samples.Median is { } perChunk) restore += perChunk;
                else return null;
            return (restore + rest, miss);
        }
    }

    private Samples ChunkSamples(TierId tier) => _chunkMs.TryGetValue(tier, out var s) ? s : _chunkMs[tier] = new Samples(Window);

    /// <summary>The last <c>capacity</c> values and their median.</summary>
    private sealed class Samples(int capacity)
    {
        private readonly double[] _values = new double[capacity];
        private int _next;

        public int Count { get; private set; }

        public void Add(double value)
        {
            _values[_next] = value;
            _next = (_next + 1) % _values.Length;
            Count = Math.Min(Count + 1, _values.Length);
        }

        public double? Median => Count == 0 ? null : RunCosts.MedianOf(_values.AsSpan(0, Count).ToArray());
    }

}
