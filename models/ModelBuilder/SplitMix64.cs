namespace OrtKvTier.ModelBuilder;

/// <summary>A tiny deterministic generator whose sequence never depends on the .NET version.</summary>
internal struct SplitMix64(ulong seed)
{
    private ulong _state = seed;

    public ulong Next()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>Uniform in (0, 1].</summary>
    public double NextDouble() => ((Next() >> 11) + 1) * (1.0 / (1UL << 53));

    /// <summary>Standard normal by Box–Muller.</summary>
    public float NextGaussian() =>
        (float)(Math.Sqrt(-2.0 * Math.Log(NextDouble())) * Math.Cos(2 * Math.PI * NextDouble()));
}
