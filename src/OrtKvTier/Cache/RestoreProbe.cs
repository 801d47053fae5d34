using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// The cache's warm-up: a few restores of made-up chunks through the real restore path, from a slot pool in memory and
/// from host memory, into a scratch past, once per model identity in a process. It compiles the path: a process that
/// starts cold otherwise pays some 20 ms on its first restore. What it takes is not measured: it runs beside the process's
/// start (model load, first requests), and the restore decision goes by real restores. Nothing of it is observed (no
/// spans, no metrics) or kept.
/// </summary>
internal static class RestoreProbe
{
    /// <summary>Chunk bytes the probe restores at most.</summary>
    private const long ProbeBytes = 8L << 20;

    public static void Run(ChunkLayout layout, SlotPoolIdentity identity, ILogger? logger)
    {
        try
        {
            Restore(layout, identity);
        }
        catch (Exception e)
        {
            logger?.LogDebug(e, "Prefix cache: the warm-up probe failed; the first restore compiles the path instead.");
        }
    }

    private static void Restore(ChunkLayout layout, SlotPoolIdentity identity)
    {
        int chunks = (int)Math.Clamp(ProbeBytes / layout.ChunkBytes, 1, 8);
        var secret = CacheSecret.CreateRandom();
        var chain = new ChunkChain(identity.Fingerprint, layout.ChunkTokens, secret, salt: null);
        var tokens = Enumerable.Range(0, chunks * layout.ChunkTokens + RestorePlanner.MinimumSuffixTokens).ToArray();
        var keys = chain.Keys(tokens);
        var payload = new byte[layout.ChunkBytes];
        RandomNumberGenerator.Fill(payload);
        var faults = new TierFaults(logger: null);
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
                RestoreTwice(fromDisk, layout, chain, tokens, Prepare);

            var host = new HostTier(chunks * layout.ChunkBytes, layout.ChunkBytes);
            for (int i = 0; i < chunks; i++) host.Write(keys[i], tokens.AsSpan(i * layout.ChunkTokens, layout.ChunkTokens), payload);
            using (var fromHost = new TierStack(host, [], faults))
                RestoreTwice(fromHost, layout, chain, tokens, Prepare);
        }
        finally
        {
            past?.Dispose();
        }
    }

    /// <summary>Restores that compile the path, the decision included (the runtime compiles some methods again on later calls).</summary>
    private static void RestoreTwice(TierStack tiers, ChunkLayout layout, ChunkChain chain, int[] tokens, Func<int, IKvTensorView> prepare)
    {
        using var writes = new LowerTierWriter([], layout.ChunkBytes, tiers.Faults, logger: null);
        var planner = new RestorePlanner(tiers, writes, layout, new RestoreCosts(), observed: false, alwaysRestore: true);
        // The decision's arithmetic too (fitting lines through runs): made-up runs, so it is compiled before a request needs it.
        var runs = new RunCosts();
        for (int round = 0; round < 3; round++)
        {
            runs.Record(tokens.Length, 0, 1 + round);
            runs.Record(1, tokens.Length, 0.1);
            runs.Record(2, tokens.Length, 0.2);
            planner.Restore(tokens, 0, chain, new HostRestoreSink(layout, prepare), runs: runs);
        }
    }
}
