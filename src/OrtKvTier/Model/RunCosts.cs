namespace OrtKvTier.Model;

/// <summary>
/// What running this model costs on this machine, measured on every run of its generators: runs over an empty past (a
/// prompt computed from its start) and runs after a past (a suffix after a restore, a decoding step) each give a line,
/// milliseconds = fixed + per token × tokens, fitted robustly (Theil–Sen over the last runs, so a slow first run or a pause
/// does not move it). The prefix cache weighs restoring against it. Thread-safe.
/// </summary>
internal sealed class RunCosts
{
    /// <summary>Runs kept per line: enough for a robust fit, few enough that fitting (pairs of runs) costs microseconds.</summary>
    private const int Window = 24;
    private readonly object _gate = new();
    private readonly RunLine _fresh = new(Window), _afterPast = new(Window);
    /// <summary>The lines fitted to the runs so far (null: to fit again, runs came since).</summary>
    private (Line? Fresh, Line? AfterPast)? _fitted;

    /// <summary>A run over <paramref name="tokens"/> new tokens after <paramref name="pastTokens"/> computed ones took <paramref name="ms"/>.</summary>
    public void Record(int tokens, int pastTokens, double ms)
    {
        if (tokens < 1 || !double.IsFinite(ms) || ms < 0) return;
        lock (_gate)
        {
            (pastTokens == 0 ? _fresh : _afterPast).Add(tokens, ms);
            _fitted = null;
        }
    }

    /// <summary>
    /// The expected milliseconds of a run over <paramref name="tokens"/> tokens, over an empty past or after one; null until
    /// runs of that kind were measured (and a per-token cost: runs of different lengths, of either kind).
    /// </summary>
    public double? Estimate(int tokens, bool afterPast)
    {
        lock (_gate)
        {
            _fitted ??= Fit();
            return (afterPast ? _fitted.Value.AfterPast : _fitted.Value.Fresh)?.At(tokens);
        }
    }

    /// <summary>Both lines. A line's own runs of different lengths give its slope; else both kinds of runs together (decoding steps and full prompts).</summary>
    private (Line? Fresh, Line? AfterPast) Fit()
    {
        double? pooled = null;
        double? Pooled() => pooled ??= RunLine.Slope([.. _fresh.Runs, .. _afterPast.Runs]);
        return (_fresh.Fit(Pooled), _afterPast.Fit(Pooled));
    }

    /// <summary>A line <c>ms = Fixed + PerToken × tokens</c>.</summary>
    public readonly record struct Line(double Fixed, double PerToken)
    {
        public double At(int tokens) => Fixed + PerToken * tokens;
    }

    /// <summary>The last runs (tokens, ms) of one kind, and a robust line through them.</summary>
    private sealed class RunLine(int capacity)
    {
        private readonly (int Tokens, double Ms)[] _runs = new (int, double)[capacity];
        private int _next, _count;

        public void Add(int tokens, double ms)
        {
            _runs[_next] = (tokens, ms);
            _next = (_next + 1) % _runs.Length;
            _count = Math.Min(_count + 1, _runs.Length);
        }

        public (int Tokens, double Ms)[] Runs => _runs[.._count];

        /// <summary>
        /// The Theil–Sen line (median of the slopes between runs of different lengths, then the median intercept); when every
        /// run had the same length, the line through them with <paramref name="perToken"/>() as slope. Null with no runs, or
        /// with no slope to take.
        /// </summary>
        public Line? Fit(Func<double?> perToken)
        {
            if (_count == 0) return null;
            var runs = Runs;
            if ((Slope(runs) ?? perToken()) is not { } slope) return null;
            var intercepts = new double[runs.Length];
            for (int i = 0; i < runs.Length; i++) intercepts[i] = runs[i].Ms - slope * runs[i].Tokens;
            return new Line(Math.Max(0, MedianOf(intercepts)), slope);
        }

        /// <summary>
        /// Runs whose lengths differ by a quarter of the longer one at least: the slope between runs of nearly one length is
        /// their noise divided by a few tokens.
        /// </summary>
        private static bool FarApart(int a, int b) => 4L * Math.Abs(a - b) >= Math.Max(a, b);

        /// <summary>The median of the slopes between runs of lengths far apart (at least 0); null when there are none.</summary>
        public static double? Slope((int Tokens, double Ms)[] runs)
        {
            var slopes = new double[runs.Length * (runs.Length - 1) / 2];
            int count = 0;
            for (int i = 0; i < runs.Length; i++)
                for (int j = i + 1; j < runs.Length; j++)
                    if (FarApart(runs[i].Tokens, runs[j].Tokens)) slopes[count++] = (runs[j].Ms - runs[i].Ms) / (runs[j].Tokens - runs[i].Tokens);
            return count > 0 ? Math.Max(0, MedianOf(slopes[..count])) : null;
        }
    }

    public static double MedianOf(double[] values)
    {
        Array.Sort(values);
        int n = values.Length;
        return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
    }
}
