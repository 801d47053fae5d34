using System.Collections.Concurrent;
using OrtKvTier.Storage;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// What restoring and what computing cost on this machine, measured (medians of recent samples), and the decision they
/// make: a found prefix is restored only when restoring it is expected to take less than computing its tokens, so a hit
/// is never slower than a miss (small prefixes, tiny models). Restores feed it (preparing the past, then each chunk's
/// placement by tier; the cache's warm-up probe gives first figures), and so does every run of the model (a one-token
/// step gives a run's fixed cost, longer runs the cost of each further token). One per model identity in a process,
/// shared by its caches. Thread-safe.
/// </summary>
internal sealed class RestoreCosts
{
    private const int Window = 31;
    private static readonly ConcurrentDictionary<SlotPoolIdentity, RestoreCosts> ByIdentity = new();

    private readonly object _gate = new();
    private readonly Samples _stepMs = new(Window), _tokenMs = new(Window), _beginMs = new(Window);
    private readonly Dictionary<TierId, Samples> _chunkMs = [];

    /// <summary>The costs measured for <paramref name="identity"/> in this process.</summary>
    public static RestoreCosts For(SlotPoolIdentity identity) => ByIdentity.GetOrAdd(identity, _ => new RestoreCosts());

    /// <summary>Whether restores were measured already (by a restore or the probe).</summary>
    public bool KnowsRestores
    {
        get
        {
            lock (_gate) return _beginMs.Count > 0;
        }
    }

    /// <summary>A run of the model over <paramref name="tokens"/> new tokens took <paramref name="ms"/>.</summary>
    public void RecordRun(int tokens, double ms)
    {
        if (tokens < 1 || !double.IsFinite(ms) || ms < 0) return;
        lock (_gate)
        {
            if (tokens == 1) _stepMs.Add(ms);
            else if (tokens >= 8) _tokenMs.Add(Math.Max(0, (ms - (_stepMs.Median ?? 0)) / (tokens - 1)));
        }
    }

    /// <summary>A restore of chunks from <paramref name="tiers"/>: preparing the destination took <paramref name="beginMs"/>, placing the chunks <paramref name="placeMs"/>.</summary>
    public void RecordRestore(IReadOnlyList<TierId> tiers, double beginMs, double placeMs)
    {
        if (tiers.Count == 0) return;
        lock (_gate)
        {
            _beginMs.Add(beginMs);
            if (tiers.All(t => t == tiers[0])) ChunkSamples(tiers[0]).Add(placeMs / tiers.Count);
        }
    }

    /// <summary>Takes in what <paramref name="probe"/> measured of restores (the warm-up's figures).</summary>
    public void Adopt(RestoreCosts probe)
    {
        lock (probe._gate)
        lock (_gate)
        {
            _beginMs.AddAll(probe._beginMs);
            foreach (var (tier, samples) in probe._chunkMs) ChunkSamples(tier).AddAll(samples);
        }
    }

    /// <summary>
    /// Null when restoring <paramref name="tokens"/> tokens in chunks from <paramref name="tiers"/> is expected to cost less
    /// than computing them (or when either cost is not known yet: then it restores, and measures); otherwise why not, with
    /// both estimates.
    /// </summary>
    public string? WhyCompute(IReadOnlyList<TierId> tiers, int tokens)
    {
        if (Estimate(tiers, tokens) is not var (restoreMs, computeMs) || restoreMs < computeMs) return null;
        return $"restoring {tokens} tokens ({tiers.Count} chunks from {string.Join('+', tiers.Distinct())}) would take about {restoreMs:F2} ms, computing them about {computeMs:F2} ms (measured on this machine)";
    }

    /// <summary>The expected milliseconds of restoring and of computing, or null while either is unknown.</summary>
    public (double RestoreMs, double ComputeMs)? Estimate(IReadOnlyList<TierId> tiers, int tokens)
    {
        lock (_gate)
        {
            if (_tokenMs.Median is not { } perToken || _beginMs.Median is not { } begin) return null;
            double restore = begin;
            foreach (var tier in tiers)
                if (_chunkMs.TryGetValue(tier, out var samples) && samples.Median is { } perChunk) restore += perChunk;
                else return null;
            return (restore, perToken * tokens);
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

        public void AddAll(Samples other)
        {
            for (int i = 0; i < other.Count; i++) Add(other._values[i]);
        }

        public double? Median
        {
            get
            {
                if (Count == 0) return null;
                var sorted = _values[..Count];
                Array.Sort(sorted);
                return Count % 2 == 1 ? sorted[Count / 2] : (sorted[Count / 2 - 1] + sorted[Count / 2]) / 2;
            }
        }
    }
}
