using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Tiers;

/// <summary>
/// One chunk's bytes in a native buffer rented from the host tier's pool, with its key and token ids.
/// Shared by reference count (<see cref="Retain"/>, <see cref="Release"/>; it starts at one) so a restore
/// can keep reading a chunk the host tier evicts meanwhile; the last release returns the buffer to the pool.
/// </summary>
internal sealed unsafe class HostChunk
{
    private readonly NativeBufferPool _pool;
    private NativeBuffer? _buffer;
    private int _references = 1;

    /// <summary>A chunk whose bytes (undefined until written) come from <paramref name="pool"/>.</summary>
    public HostChunk(ChunkKey key, ReadOnlySpan<int> tokens, NativeBufferPool pool)
    {
        Key = key;
        Tokens = tokens.ToArray();
        Length = pool.BufferBytes;
        _pool = pool;
        _buffer = pool.Rent();
    }

    public ChunkKey Key { get; }
    public int[] Tokens { get; }
    public long Length { get; }

    /// <summary>Set while the bytes still have to reach the lower tiers (write-back).</summary>
    public volatile bool PendingLowerWrite;

    /// <summary>The bytes; valid while the caller holds a reference.</summary>
    public byte* Pointer => _buffer is { } buffer ? buffer.Pointer : throw new ObjectDisposedException(nameof(HostChunk));

    /// <summary>The bytes; valid while the caller holds a reference.</summary>
    public Span<byte> Bytes => new(Pointer, checked((int)Length));

    /// <summary>The bytes as <see cref="Memory{T}"/> (valid while a reference is held).</summary>
    public Memory<byte> Memory => new NativeMemoryManager(this).Memory;

    public bool TokensEqual(ReadOnlySpan<int> tokens) => tokens.SequenceEqual(Tokens);

    /// <summary>A read of the bytes that takes over one reference the caller holds (released when the read finishes or is abandoned).</summary>
    public ChunkRead Read() => ChunkRead.FromMemory(Pointer, Length, new Reference(this));

    private sealed class Reference(HostChunk chunk) : IDisposable
    {
        private int _released;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0) chunk.Release();
        }
    }

    /// <summary>Adds a reference; pair with <see cref="Release"/>.</summary>
    public HostChunk Retain()
    {
        Interlocked.Increment(ref _references);
        return this;
    }

    /// <summary>Drops a reference; the buffer goes back with the last one.</summary>
    public void Release()
    {
        int left = Interlocked.Decrement(ref _references);
        if (left == 0) _pool.Return(Interlocked.Exchange(ref _buffer, null)!);
        else if (left < 0) throw new InvalidOperationException($"Chunk {Key} was released more often than retained.");
    }
}

/// <summary>Exposes a <see cref="HostChunk"/>'s native bytes as <see cref="Memory{T}"/>.</summary>
internal sealed unsafe class NativeMemoryManager(HostChunk chunk) : System.Buffers.MemoryManager<byte>
{
    public override Span<byte> GetSpan() => chunk.Bytes;
    public override System.Buffers.MemoryHandle Pin(int elementIndex = 0) => new(chunk.Pointer + elementIndex);
    public override void Unpin() { }
    protected override void Dispose(bool disposing) { }
}
