using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using OrtKvTier.Keys;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// The cache's warm-up: a few restores of made-up chunks through the real restore path, from a slot pool in memory and
/// from host memory, into a scratch past. The first round compiles the path (a process that starts cold otherwise pays
/// some 20 ms on its first restore); the next ones measure what preparing a past and placing a chunk cost here: figures
/// for <see cref="RestoreCosts"/> (the first ones, and fresh ones while the cache keeps computing what it found, so a
/// slow moment measured once does not keep it computing). Nothing of it is observed (no spans, no metrics) or kept.
/// </summary>
internal static class RestoreProbe
{
    /// <summary>Chunk bytes the probe restores at most.</summary>
    private const long ProbeBytes = 8L << 20;

    public static void Run(ChunkLayout layout, SlotPoolIdentity identity, RestoreCosts costs, ILogger? logger)
    {
        try
        {
            costs.Adopt(Measure(layout, identity));
        }
        catch (Exception e)
        {
            logger?.LogDebug(e, "Prefix cache: the warm-up probe failed; restore costs are measured by the first restores instead.");
        }
    }

    private static RestoreCosts Measure(ChunkLayout layout, SlotPoolIdentity identity)
    {
        int chunks = (int)Math.Clamp(ProbeBytes / layout.ChunkBytes, 1, 8);
        var secret = CacheSecret.CreateRandom();
        var chain = new ChunkChain(identity.Fingerprint, layout.ChunkTokens, secret, salt: null);
        var tokens = Enumerable.Range(0, chunks * layout.ChunkTokens + RestorePlanner.MinimumSuffixTokens).ToArray();
        var keys = chain.Keys(tokens);
        var payload = new byte[layout.ChunkBytes];
        RandomNumberGenerator.Fill(payload);
        var faults = new TierFaults(logger: null);
        var measured = new RestoreCosts();
        OrtKvTensors? past = null;
        IKvTensorView Prepare(int rows)
        {
            past?.Dispose();
            return past = OrtKvTensors.Allocate(layout.Layout, rows);
        }
        try
        {
            var pool = SlotPool.Open(new SlotPoolOptions
            {
                Directory = "ortkv-warm-up", Medium = new MemoryMedium("ortkv-warm-up"), Identity = identity, CapacitySlots = chunks, Durability = Durability.None,
                Secret = secret,
            });
            for (int i = 0; i < chunks; i++) pool.Put(keys[i], tokens.AsSpan(i * layout.ChunkTokens, layout.ChunkTokens), payload);
            using (var fromDisk = new TierStack(new HostTier(0, layout.ChunkBytes), [DiskTier.Over(pool, faults)], faults))
                RestoreAndMeasure(fromDisk, layout, measured, chain, tokens, Prepare);

            var host = new HostTier(chunks * layout.ChunkBytes, layout.ChunkBytes);
            for (int i = 0; i < chunks; i++) host.Write(keys[i], tokens.AsSpan(i * layout.ChunkTokens, layout.ChunkTokens), payload);
            using (var fromHost = new TierStack(host, [], faults))
                RestoreAndMeasure(fromHost, layout, measured, chain, tokens, Prepare);
        }
        finally
        {
            past?.Dispose();
        }
        return measured;
    }

    /// <summary>Restores measured after one that compiles the path (its figures thrown away).</summary>
    private const int MeasuredRounds = 3;

    /// <summary>A first restore that compiles the path (its figures thrown away), then <see cref="MeasuredRounds"/> that are measured.</summary>
    private static void RestoreAndMeasure(TierStack tiers, ChunkLayout layout, RestoreCosts measured, ChunkChain chain, int[] tokens, Func<int, IKvTensorView> prepare)
    {
        using var writes = new LowerTierWriter([], layout.ChunkBytes, tiers.Faults, logger: null);
        new RestorePlanner(tiers, writes, layout, new RestoreCosts(), observed: false, alwaysRestore: true).Restore(tokens, 0, chain, new HostRestoreSink(layout, prepare));
        var planner = new RestorePlanner(tiers, writes, layout, measured, observed: false, alwaysRestore: true);
        for (int round = 0; round < MeasuredRounds; round++) planner.Restore(tokens, 0, chain, new HostRestoreSink(layout, prepare));
    }
}
