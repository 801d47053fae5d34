using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Keys;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers;

namespace OrtKvTier.Cache;

/// <summary>
/// A chain found in the tiers' indexes: keys, token ids and host leases (null where a lower tier holds the
/// chunk), and what a round trip already placed in the past. Owns the leases: Dispose releases them.
/// </summary>
internal sealed class ChainPlan(ChunkKey[] keys, int[] tokens, HostChunk?[] leased, TierId?[] from, long startTimestamp, PastOnArrival? arrival = null) : IDisposable
{
    /// <summary>The past prepared before a round trip, with the chunks that came placed in it; null when none was made.</summary>
    public PastOnArrival? Arrival { get; } = arrival;
    public ChunkKey[] Keys { get; } = keys;
    public int[] Tokens { get; } = tokens;
    public HostChunk?[] Leased { get; } = leased;
    /// <summary>The tier each leased chunk came from (host, or a remote tier it was just fetched from).</summary>
    public TierId?[] From { get; } = from;
    public int Count => Keys.Length;
    public long StartTimestamp { get; } = startTimestamp;

    public void Dispose()
    {
        foreach (var chunk in Leased) chunk?.Release();
    }
}

/// <summary>
/// One plan chunk restored in stages: its bytes come from host memory or from a verified read done a range
/// of checksum blocks at a time, so past tensors can be copied on while later blocks are read.
/// </summary>
internal sealed unsafe class StagedChunk
{
    private readonly RestorePlanner _planner;
    private readonly PayloadScatter _scatter;
    private readonly HostChunk? _memory;
    private readonly bool _owned;
    private readonly IStagedRead? _read;
    private readonly ChunkKey _key;
    private readonly TierId _tier;
    private bool _failed;

    /// <summary>Bytes from a host chunk; <paramref name="owned"/>: this object releases it.</summary>
    public StagedChunk(RestorePlanner planner, PayloadScatter scatter, HostChunk memory, bool owned, TierId tier)
    {
        (_planner, _scatter, _memory, _owned, _key, _tier) = (planner, scatter, memory, owned, memory.Key, tier);
    }

    /// <summary>Bytes from a verified read begun in <paramref name="tier"/>.</summary>
    public StagedChunk(RestorePlanner planner, PayloadScatter scatter, IStagedRead read, ChunkKey key, TierId tier)
    {
        (_planner, _scatter, _read, _key, _tier) = (planner, scatter, read, key, tier);
    }

    /// <summary>The tier the bytes come from.</summary>
    public TierId From => _tier;

    /// <summary>Places payload blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive).</summary>
    public void Fill(int firstBlock, int endBlock)
    {
        if (_failed) return;
        if (_memory is not null)
        {
            long start = (long)firstBlock * StoredFormats.SealBlockBytes;
            long end = Math.Min((long)endBlock * StoredFormats.SealBlockBytes, _memory.Length);
            if (end > start) _scatter.Place(_memory.Pointer + start, start, end - start);
            return;
        }
        try
        {
            _read!.ReadBlocks(firstBlock, Math.Min(endBlock, _read.Blocks));
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            _failed = true;
            _planner.ReadFailed(e, _key, _tier);
        }
    }

    /// <summary>After every block is placed: the tier the chunk came from, or null when its bytes failed verification (then it is a miss).</summary>
    public TierId? Finish()
    {
        try
        {
            if (_read is not null && (_failed || !_read.Verify())) return null;
            return _planner.CountHit(_tier);
        }
        finally
        {
            if (_owned) _memory!.Release();
        }
    }

    /// <summary>Lets go of a chunk not read to the end (the restore stopped): no verdict on its bytes. Returns null.</summary>
    public TierId? Abandon()
    {
        if (_owned) _memory!.Release();
        return null;
    }
}

/// <summary>
/// The past of a restore whose chunks come from a round trip, prepared for every chunk asked (<see cref="Rows"/> rows)
/// when the first one arrives on the thread that created this (the past's owner, which reads one of the sockets), each
/// chunk placed by the thread that received it as soon as it arrived intact: placing chunk i overlaps with fetching the
/// next ones, and a round trip that returns nothing prepares nothing. Only the owner prepares (the past's memory comes
/// from its allocator: memory allocated on a fresh thread costs a page fault per 4 KiB); chunks other threads received
/// before that wait, and the owner places them once the past is ready. Used when the restore covers exactly
/// <see cref="Rows"/> (every chunk came); otherwise the past is prepared again.
/// </summary>
internal sealed unsafe class PastOnArrival(ChunkLayout layout, Func<int, IKvTensorView> prepare, int rows)
{
    private readonly object _gate = new();
    private readonly Thread _owner = Thread.CurrentThread;
    private readonly bool[] _placed = new bool[layout.ChunksOf(rows)];
    private readonly List<(int Index, HostChunk Chunk)> _waiting = [];
    private byte*[]? _past;
    private int _capacity;
    private bool _failed;

    /// <summary>The prepared past; null until a chunk arrived on the owner's thread (or when preparing it failed).</summary>
    public IKvTensorView? View { get; private set; }

    public int Rows { get; } = rows;

    /// <summary>
    /// Copies plan chunk <paramref name="index"/> (intact, in host memory, kept until the round trip ends) to its rows,
    /// or keeps it for the owner until the past is prepared. A chunk not placed when the round trip ends (the owner
    /// received nothing, or preparing the past failed) is left to the fill, which prepares the past again if it must
    /// (and reports what fails there).
    /// </summary>
    public void Place(int index, HostChunk chunk)
    {
        if (index >= _placed.Length) return;
        (int Index, HostChunk Chunk)[] ready;
        byte*[] past;
        lock (_gate)
        {
            if (_past is null)
            {
                if (_failed) return;
                if (Thread.CurrentThread != _owner)
                {
                    _waiting.Add((index, chunk));
                    return;
                }
                if (!TryPrepare()) return;
            }
            (past, ready) = (_past!, [.. _waiting, (index, chunk)]);
            _waiting.Clear();
        }
        foreach (var (i, c) in ready)
        {
            layout.ScatterToPast(past, _capacity, i, layout.RowsOf(i, Rows)).Place(c.Pointer, 0, c.Length);
            _placed[i] = true;
        }
    }

    private bool TryPrepare()
    {
        try
        {
            var view = prepare(Rows);
            _past = layout.PopulatedPointers(view, Rows);
            _capacity = view.Capacity;
            View = view;
            return true;
        }
        catch (Exception e) when (e is OnnxRuntimeException or OutOfMemoryException or ArgumentException or InvalidOperationException)
        {
            (_failed, _past) = (true, null);
            return false;
        }
    }

    /// <summary>Whether chunk <paramref name="index"/> is in place for a restore of <paramref name="restored"/> rows (into <see cref="View"/>).</summary>
    public bool Holds(int index, int restored) => restored == Rows && _placed[index];
}
