using OrtKvTier.Keys;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// A chain found in the tiers for one restore attempt: the candidate keys and their token ids, and for each chunk found
/// so far, in order, its read and the tier it comes from; what a round trip already placed in the past. Owns the reads:
/// Dispose abandons those not finished.
/// </summary>
internal sealed class ChainPlan(ChunkKey[] keys, int[] tokens, int chunkTokens, int usable, long startTimestamp) : IDisposable
{
    private readonly List<LocatedChunk> _chunks = [];

    /// <summary>The keys of the full chunks that could be restored.</summary>
    public ChunkKey[] Keys { get; } = keys;

    /// <summary>The token ids of those chunks.</summary>
    public int[] Tokens { get; } = tokens;

    /// <summary>The chunks found, in order, with their reads.</summary>
    public IReadOnlyList<LocatedChunk> Chunks => _chunks;

    public int Count => _chunks.Count;

    /// <summary>Rows a restore of the chunks found gives (the prompt's last tokens always run).</summary>
    public int Restored => Math.Min(Count * chunkTokens, usable);

    /// <summary>Rows a restore may give at most: the prompt less the tokens that always run.</summary>
    public int Usable => usable;

    /// <summary>The tier of each chunk found.</summary>
    public TierId[] Tiers => [.. _chunks.Select(c => c.Tier)];

    /// <summary>The past prepared when the first chunk of a round trip arrived, with the chunks placed in it; null when none was.</summary>
    public ArrivalPlacement? Arrival { get; set; }

    public long StartTimestamp { get; } = startTimestamp;

    /// <summary>Milliseconds the lookup took.</summary>
    public double LookupMs { get; set; }

    public ReadOnlySpan<int> TokensOf(int chunk) => Tokens.AsSpan(chunk * chunkTokens, chunkTokens);

    public void Add(LocatedChunk chunk) => _chunks.Add(chunk);

    /// <summary>Keeps the first <paramref name="count"/> chunks, abandoning the reads of the others.</summary>
    public void Truncate(int count)
    {
        for (int i = count; i < _chunks.Count; i++) _chunks[i].Read.Abandon();
        if (count < _chunks.Count) _chunks.RemoveRange(count, _chunks.Count - count);
    }

    /// <summary>Replaces chunk <paramref name="index"/> (read again from another tier).</summary>
    public void Replace(int index, LocatedChunk chunk)
    {
        _chunks[index].Read.Abandon();
        _chunks[index] = chunk;
    }

    public void Dispose() => Truncate(0);
}

/// <summary>
/// The past of a restore whose chunks come from a round trip, prepared for every chunk asked (<see cref="Rows"/> rows)
/// when the first one arrives on the thread that created this (the past's owner, which reads one of the sockets), each
/// chunk placed by the thread that received it as soon as it arrived intact: placing chunk i overlaps with fetching the
/// next ones, and a round trip that returns nothing prepares nothing. Only the owner prepares (the past's memory comes
/// from its allocator: memory allocated on a fresh thread costs a page fault per 4 KiB); chunks other threads received
/// before that wait, and the owner places them once the past is ready. Used when the restore covers exactly
/// <see cref="Rows"/> (every chunk came); otherwise the sink is begun again.
/// </summary>
internal sealed unsafe class ArrivalPlacement(RestoreSink sink, int rows)
{
    private readonly object _gate = new();
    private readonly Thread _owner = Thread.CurrentThread;
    private readonly bool[] _placed = new bool[sink.Layout.ChunksOf(rows)];
    private readonly List<(int Index, HostChunk Chunk)> _waiting = [];
    private bool _ready, _failed;

    public int Rows { get; } = rows;

    /// <summary>
    /// Copies chunk <paramref name="index"/> (intact, in host memory, kept until the round trip ends) to its rows, or keeps
    /// it for the owner until the past is prepared. A chunk not placed when the round trip ends (the owner received
    /// nothing, or preparing the past failed) is left to the fill.
    /// </summary>
    public void Place(int index, HostChunk chunk)
    {
        if (index >= _placed.Length) return;
        (int Index, HostChunk Chunk)[] ready;
        lock (_gate)
        {
            if (!_ready)
            {
                if (_failed) return;
                if (Thread.CurrentThread != _owner)
                {
                    _waiting.Add((index, chunk));
                    return;
                }
                if (!TryBegin()) return;
            }
            ready = [.. _waiting, (index, chunk)];
            _waiting.Clear();
        }
        foreach (var (i, c) in ready)
        {
            sink.ScatterFor(i).Place(c.Pointer, 0, c.Length);
            _placed[i] = true;
        }
    }

    private bool TryBegin()
    {
        try
        {
            sink.Begin(Rows);
            return _ready = true;
        }
        catch (Exception e) when (e is Microsoft.ML.OnnxRuntime.OnnxRuntimeException or OutOfMemoryException or ArgumentException or InvalidOperationException)
        {
            _failed = true;
            return false;
        }
    }

    /// <summary>Whether chunk <paramref name="index"/> is in place for an attempt of <paramref name="rows"/> rows still under way in the sink.</summary>
    public bool Holds(int index, int rows) => rows == Rows && sink.Active && sink.Rows == Rows && _placed[index];
}
