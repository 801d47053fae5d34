using OrtKvTier.Keys;
using OrtKvTier.Storage;

using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>A chunk found for a restore: its read, the tier it comes from, and (when it was read whole from a lower tier into host memory just now) that new host chunk and its tier, for the caller to keep and promote (the caller owns one reference).</summary>
internal readonly record struct LocatedChunk(ChunkRead Read, TierId Tier, (HostChunk Chunk, IKvChunkTier From)? Fetched = null);

/// <summary>
/// The tiers a cache plans over, ordered hot to cold: host memory, then the lower tiers (the disk, then any others such
/// as a remote server). It answers the questions a restore asks of them, each tier asked the way its
/// <see cref="TierCost"/> says (local indexes key by key, round-trip tiers once for many keys), and turns every read
/// that throws into a miss and a fault of that tier (<see cref="Faults"/>). It owns the tiers.
/// </summary>
internal sealed class TierStack : IDisposable
{
    private readonly IKvChunkTier[] _localIndex;

    public TierStack(HostTier host, IReadOnlyList<IKvChunkTier> lower, TierFaults faults)
    {
        Host = host;
        Lower = [.. lower];
        Faults = faults;
        RoundTrip = [.. lower.Where(t => t.Cost == TierCost.NetworkRoundTrip)];
        _localIndex = [host, .. lower.Where(t => t.Cost == TierCost.LocalIndex)];
        All = [host, .. lower];
    }

    /// <summary>Host memory: where every chunk read from a lower tier, and every chunk stored, is kept.</summary>
    public HostTier Host { get; }

    /// <summary>The tiers below host memory, in the order they are asked.</summary>
    public IKvChunkTier[] Lower { get; }

    /// <summary>The lower tiers asked once per lookup for the rest of a chain (a remote server).</summary>
    public IKvChunkTier[] RoundTrip { get; }

    /// <summary>Every tier, fastest first.</summary>
    public IKvChunkTier[] All { get; }

    /// <summary>Where the tiers report what they degraded around.</summary>
    public TierFaults Faults { get; }

    /// <summary>How <paramref name="tier"/> stores KV (device and host memory hold it exact).</summary>
    public KvEncoding EncodingOf(TierId tier) => Lower.FirstOrDefault(t => t.Id == tier)?.Encoding ?? KvEncoding.Exact;

    /// <summary>Leading keys that some tier's index holds (<paramref name="localOnly"/>: host and local tiers, no round trip); bytes are verified only when read.</summary>
    public int IndexedChainLength(ReadOnlySpan<ChunkKey> keys, bool localOnly = false)
    {
        var tiers = localOnly ? _localIndex : All;
        int count = 0;
        while (count < keys.Length && HeldByAny(tiers, keys[count])) count++;
        return count;
    }

    /// <summary>Whether a local tier (host, disk, …) other than host memory holds <paramref name="key"/>.</summary>
    public bool HeldBelowHost(ChunkKey key) => HeldByAny(_localIndex.AsSpan(1), key);

    private bool HeldByAny(ReadOnlySpan<IKvChunkTier> tiers, ChunkKey key)
    {
        foreach (var tier in tiers)
            if (Held(tier, key)) return true;
        return false;
    }

    /// <summary>
    /// The chunk under <paramref name="key"/> from the first local tier that holds it with these token ids, ready to be
    /// placed: a lease of host memory, a read begun in place (the disk: one index lookup and its header checked), or the
    /// chunk read whole from another local tier into host memory. Null when none has it.
    /// </summary>
    public LocatedChunk? LocateLocal(ChunkKey key, ReadOnlySpan<int> tokens)
    {
        if (Host.TryLease(key, tokens, out var leased)) return new LocatedChunk(leased.Read(), TierId.Host);
        foreach (var tier in _localIndex.Skip(1))
        {
            if (tier is IInPlaceReadTier inPlace)
            {
                if (inPlace.BeginRead(key, tokens) is { } read) return new LocatedChunk(read, tier.Id);
            }
            else if (Held(tier, key) && ReadWhole(tier, key, tokens) is { } chunk) return new LocatedChunk(chunk.Retain().Read(), tier.Id, (chunk, tier));
        }
        return null;
    }

    /// <summary>
    /// The chunk read whole into a new host chunk from the first lower tier after <paramref name="failed"/> that is not
    /// read in place and returns it intact (after an in-place read failed verification); null when none does. The caller
    /// owns the chunk (one reference).
    /// </summary>
    public (HostChunk Chunk, IKvChunkTier Tier)? ReadWholeAfter(TierId failed, ChunkKey key, ReadOnlySpan<int> tokens)
    {
        foreach (var tier in Lower.SkipWhile(t => t.Id != failed).Skip(1).Where(t => t is not IInPlaceReadTier))
            if (ReadWhole(tier, key, tokens) is { } chunk) return (chunk, tier);
        return null;
    }

    /// <summary>
    /// Asks the round-trip tiers for <paramref name="keys"/> (one batch per tier, each for what the ones before it lacked)
    /// into new host chunks; <paramref name="arrived"/>(i, chunk) runs as soon as chunk i is in host memory, intact (on the
    /// thread that received it). Returns what came, by index, with the tier of each; the caller owns the chunks.
    /// </summary>
    public Dictionary<int, (HostChunk Chunk, IKvChunkTier Tier)> FetchRoundTrip(IReadOnlyList<ChunkKey> keys, IReadOnlyList<int[]> tokens, Action<int, HostChunk>? arrived)
    {
        var fetched = new Dictionary<int, (HostChunk, IKvChunkTier)>();
        var missing = Enumerable.Range(0, keys.Count).ToList();
        foreach (var tier in RoundTrip)
        {
            if (missing.Count == 0) break;
            var chunks = missing.Select(i => Host.NewChunk(keys[i], tokens[i])).ToArray();
            bool[] found;
            try
            {
                var asked = missing;
                found = tier.TryReadMany([.. missing.Select(i => keys[i])], [.. chunks.Select(c => c.Tokens)], [.. chunks.Select(c => c.Memory)],
                    arrived is null ? null : j => arrived(asked[j], chunks[j]));
            }
            catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException)
            {
                ReadFailed(tier.Id, e);
                found = new bool[chunks.Length];
            }
            var still = new List<int>();
            for (int j = 0; j < missing.Count; j++)
                if (found[j]) fetched[missing[j]] = (chunks[j], tier);
                else
                {
                    chunks[j].Release();
                    still.Add(missing[j]);
                }
            missing = still;
        }
        return fetched;
    }

    public void Dispose()
    {
        foreach (var tier in All) tier.Dispose();
    }

    private HostChunk? ReadWhole(IKvChunkTier tier, ChunkKey key, ReadOnlySpan<int> tokens)
    {
        var chunk = Host.NewChunk(key, tokens);
        try
        {
            if (tier.TryRead(key, tokens, chunk.Bytes)) return chunk;
        }
        catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException or UnauthorizedAccessException)
        {
            ReadFailed(tier.Id, e);
        }
        chunk.Release();
        return null;
    }

    private bool Held(IKvChunkTier tier, ChunkKey key)
    {
        try
        {
            return tier.Contains(key);
        }
        catch (Exception e) when (e is IOException or TimeoutException or InvalidOperationException or UnauthorizedAccessException)
        {
            ReadFailed(tier.Id, e);
            return false;
        }
    }

    private void ReadFailed(TierId tier, Exception e) =>
        Faults.Report(tier, "read", $"reading a chunk failed ({e.Message}); such chunks are misses and are computed instead.", e);
}
