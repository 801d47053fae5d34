using OrtKvTier.Security;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// One chunk's bytes on their way to where they are used (past tensor rows, pinned staging, a buffer): the one type
/// for a chunk read in progress, whatever holds it. From memory (a chunk in host memory, verified when it got there)
/// the bytes are copied; from a slot (its header already checked against the key, generation and token ids) they are
/// read and authenticated one seal block at a time, so a caller can start using the first tensors while later blocks
/// are read. A slot of an encoded pool (<see cref="SlotPoolIdentity.Encoding"/>) is read whole into staging, authenticated,
/// and decoded straight to where the chunk's bytes go. <see cref="Finish"/> says whether every byte placed is the stored
/// one (a slot that fails is dropped); whoever began the read finishes or abandons it exactly once.
/// </summary>
internal sealed unsafe class ChunkRead
{
    private readonly byte* _memory;
    private readonly IDisposable? _owner;
    private readonly SlotPool? _pool;
    private readonly KvCodec? _codec;
    private bool _failed, _done, _decoded;

    private ChunkRead(long length, byte* memory, IDisposable? owner, SlotPool? pool, SlotEntry entry, UInt128 tag, EntrySeal? seal)
    {
        _codec = pool?.Codec;
        StoredLength = length;
        Length = _codec?.ExactBytes ?? length;
        Blocks = PayloadSeal.BlockCount(length);
        _memory = memory;
        _owner = owner;
        _pool = pool;
        Entry = entry;
        Tag = tag;
        Seal = seal;
        BlockTags = pool is null ? [] : new byte[Blocks * StoredFormats.MacBytes];
    }

    /// <summary>Bytes in host memory, valid until <paramref name="owner"/> is disposed (by <see cref="Finish"/> or <see cref="Abandon"/>).</summary>
    public static ChunkRead FromMemory(byte* bytes, long length, IDisposable? owner) => new(length, bytes, owner, null, default, default, null);

    /// <summary>A slot of <paramref name="pool"/> whose header checked out: its entry, payload tag and seal.</summary>
    internal static ChunkRead FromSlot(SlotPool pool, SlotEntry entry, long length, UInt128 tag, EntrySeal seal) => new(length, null, null, pool, entry, tag, seal);

    /// <summary>Bytes placed: the chunk's (decoded, for an encoded slot).</summary>
    public long Length { get; }

    /// <summary>Payload bytes as stored.</summary>
    public long StoredLength { get; }

    /// <summary>Seal blocks of the stored payload (<see cref="StoredFormats.SealBlockBytes"/> each, the last one shorter).</summary>
    public int Blocks { get; }

    /// <summary>What made the read fail (an I/O error), or null.</summary>
    public Exception? Failure { get; private set; }

    internal SlotEntry Entry { get; }
    internal UInt128 Tag { get; }
    internal EntrySeal? Seal { get; }
    /// <summary>The tag of each block read so far (slots).</summary>
    internal byte[] BlockTags { get; }

    /// <summary>Whether the bytes come from memory (already verified) rather than a slot.</summary>
    public bool FromHostMemory => _pool is null;

    /// <summary>
    /// Places blocks <paramref name="firstBlock"/>..<paramref name="endBlock"/> (exclusive, clamped to <see cref="Blocks"/>)
    /// where <paramref name="scatter"/> says. An I/O error marks the read failed (<see cref="Failure"/>) instead of throwing.
    /// </summary>
    /// <exception cref="ArgumentException">A contiguous destination smaller than the payload.</exception>
    public void Place(PayloadScatter scatter, int firstBlock, int endBlock)
    {
        endBlock = Math.Min(endBlock, Blocks);
        if (_failed || firstBlock >= endBlock) return;
        if (scatter.IsContiguous ? Length > scatter.CopyBytes : Length != scatter.Length)
        {
            if (scatter.IsContiguous) throw new ArgumentException($"The destination holds {scatter.CopyBytes} bytes; the chunk has {Length}.", nameof(scatter));
            _failed = true; // a stored payload of another size: not this chunk
            return;
        }
        if (_pool is null)
        {
            long start = (long)firstBlock * StoredFormats.SealBlockBytes;
            long end = Math.Min((long)endBlock * StoredFormats.SealBlockBytes, Length);
            scatter.Place(_memory + start, start, end - start);
            return;
        }
        try
        {
            if (_codec is null) _pool.ReadBlocks(this, scatter, firstBlock, endBlock);
            else if (!_decoded) ReadAndDecode(_codec, scatter);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ObjectDisposedException)
        {
            (_failed, Failure) = (true, e);
        }
    }

    /// <summary>An encoded slot: every stored block read into staging and authenticated, then decoded to <paramref name="scatter"/> (nothing placed when the tag fails).</summary>
    private void ReadAndDecode(KvCodec codec, PayloadScatter scatter)
    {
        _decoded = true;
        var staging = System.Buffers.ArrayPool<byte>.Shared.Rent(checked((int)StoredLength));
        try
        {
            fixed (byte* stage = staging) _pool!.ReadBlocks(this, PayloadScatter.Contiguous(stage, StoredLength), 0, Blocks);
            if (Seal!.Combine(BlockTags) != Tag)
            {
                _failed = true;
                return;
            }
            codec.Decode(staging.AsSpan(0, (int)StoredLength), scatter);
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(staging);
        }
    }

    /// <summary>Places every block.</summary>
    public void PlaceAll(PayloadScatter scatter) => Place(scatter, 0, Blocks);

    /// <summary>
    /// After every block was placed: true when the bytes are those stored (a slot's hit is counted and its entry marked
    /// used), false when they failed (the slot is dropped, a miss). Releases what the read held.
    /// </summary>
    public bool Finish()
    {
        if (_done) throw new InvalidOperationException("This chunk read was finished or abandoned already.");
        _done = true;
        try
        {
            if (_pool is null) return !_failed;
            return _pool.EndRead(this, intact: !_failed && (_codec is null || _decoded) && Seal!.Combine(BlockTags) == Tag, failure: Failure);
        }
        finally
        {
            _owner?.Dispose();
        }
    }

    /// <summary>Lets go of a read not placed to the end (the restore stopped): no verdict on its bytes.</summary>
    public void Abandon()
    {
        if (_done) return;
        _done = true;
        _owner?.Dispose();
    }
}
