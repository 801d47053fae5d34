using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Tensors;

/// <summary>
/// The byte layout of one stored chunk: for each layer, key then value, for each kv head, the
/// chunk's <c>C</c> token rows of <c>D</c> elements — <c>[L][2][kvH][C][D]</c>. Each (layer, k/v, head)
/// run is contiguous both here and in the past tensors, so a chunk moves as <c>2 × L × kvH</c> copies.
/// </summary>
internal sealed unsafe class ChunkLayout(KvLayout layout, int chunkTokens)
{
    public KvLayout Layout { get; } = layout;
    public int ChunkTokens { get; } = chunkTokens;

    /// <summary>Bytes of one chunk.</summary>
    public long ChunkBytes => (long)Layout.BytesPerToken * ChunkTokens;

    private long RunBytes => (long)ChunkTokens * Layout.BytesPerHeadToken;

    /// <summary>
    /// Where the runs of stored chunk number <paramref name="chunkIndex"/> of the sequence go in the past tensors (its
    /// first <paramref name="tokens"/> token rows of each run), for a copy from host memory or a verified read straight from a slot.
    /// </summary>
    public PayloadScatter ScatterToPast(byte*[] past, int capacity, int chunkIndex, int tokens)
    {
        RequireRoom(chunkIndex, tokens, capacity);
        long row = Layout.BytesPerHeadToken;
        var targets = new nint[past.Length * Layout.KvHeads];
        for (int tensor = 0, run = 0; tensor < past.Length; tensor++)
            for (int h = 0; h < Layout.KvHeads; h++, run++)
                targets[run] = (nint)(past[tensor] + ((long)h * capacity + (long)chunkIndex * ChunkTokens) * row);
        return new PayloadScatter(targets, RunBytes, tokens * row);
    }

    /// <summary>Copies chunk number <paramref name="chunkIndex"/> of the sequence out of the past tensors into <paramref name="destination"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void CopyFromPast(byte*[] past, int capacity, int chunkIndex, byte* destination)
    {
        RequireRoom(chunkIndex, ChunkTokens, capacity);
        long row = Layout.BytesPerHeadToken, run = 0;
        for (int tensor = 0; tensor < past.Length; tensor++)
            for (int h = 0; h < Layout.KvHeads; h++, run++)
                Buffer.MemoryCopy(past[tensor] + ((long)h * capacity + (long)chunkIndex * ChunkTokens) * row, destination + run * RunBytes, RunBytes, RunBytes);
    }

    /// <summary>Chunks that hold <paramref name="rows"/> token rows (the last one may be partial).</summary>
    public int ChunksOf(int rows) => (rows + ChunkTokens - 1) / ChunkTokens;

    /// <summary>Token rows of chunk <paramref name="chunkIndex"/> among <paramref name="rows"/> rows (fewer than a chunk for the last one).</summary>
    public int RowsOf(int chunkIndex, int rows) => Math.Min(ChunkTokens, rows - chunkIndex * ChunkTokens);

    /// <summary>The view's tensors' addresses (<see cref="Pointers"/>) with the first <paramref name="rows"/> rows backed by pages (<see cref="PopulateRows"/>).</summary>
    public byte*[] PopulatedPointers(IKvTensorView view, int rows)
    {
        var past = Pointers(view);
        PopulateRows(past, view.Capacity, rows);
        return past;
    }

    /// <summary>Backs the rows a restore of <paramref name="tokens"/> tokens writes with pages up front (a fresh tensor would fault them in one by one).</summary>
    public void PopulateRows(byte*[] past, int capacity, int tokens)
    {
        long row = Layout.BytesPerHeadToken;
        foreach (var tensor in past)
            for (int h = 0; h < Layout.KvHeads; h++)
                MemoryAdvice.PopulateWrite(tensor + (long)h * capacity * row, tokens * row);
    }

    /// <summary>Pointers to the view's tensors in chunk-layout order (layer 0 key, layer 0 value, layer 1 key, …).</summary>
    public byte*[] Pointers(IKvTensorView view)
    {
        var pointers = new byte*[Layout.Layers * 2];
        long expected = (long)Layout.KvHeads * view.Capacity * Layout.BytesPerHeadToken;
        for (int layer = 0; layer < Layout.Layers; layer++)
            for (int v = 0; v < 2; v++)
            {
                var bytes = view.TensorBytes(layer, v == 1);
                if (bytes.Length < expected)
                    throw new ArgumentException($"Past tensor {layer}/{(v == 1 ? "value" : "key")} holds {bytes.Length} bytes; [1, {Layout.KvHeads}, {view.Capacity}, {Layout.HeadSize}] needs {expected}.");
                pointers[layer * 2 + v] = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetReference(bytes));
            }
        return pointers;
    }

    private void RequireRoom(int chunkIndex, int tokens, int capacity)
    {
        if (tokens < 0 || tokens > ChunkTokens || (long)chunkIndex * ChunkTokens + tokens > capacity)
            throw new ArgumentOutOfRangeException(nameof(chunkIndex), $"Chunk {chunkIndex} ({tokens} tokens) does not fit a past of {capacity} token rows.");
    }
}
