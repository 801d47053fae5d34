using System.Text;
using OrtKvTier.Model;

namespace OrtKvTier.Storage;

/// <summary>
/// What the bytes in a pool belong to: the model fingerprint and the KV layout of one chunk.
/// A pool refuses to open for a different identity. The slot size follows from it.
/// </summary>
public sealed record SlotPoolIdentity
{
    /// <summary>Model fingerprint.</summary>
    public required ModelFingerprint Fingerprint { get; init; }
    /// <summary>Decoder layers.</summary>
    public required int Layers { get; init; }
    /// <summary>Key/value heads.</summary>
    public required int KvHeads { get; init; }
    /// <summary>Head size.</summary>
    public required int HeadSize { get; init; }
    /// <summary>Bytes per element: 2 (fp16) or 4 (fp32).</summary>
    public required int ElementSize { get; init; }
    /// <summary>Tokens in a full chunk.</summary>
    public required int ChunkTokens { get; init; }

    /// <summary>The identity for a fingerprint, a layout and a chunk length.</summary>
    public static SlotPoolIdentity For(ModelFingerprint fingerprint, KvLayout layout, int chunkTokens)
    {
        ArgumentNullException.ThrowIfNull(layout);
        var identity = new SlotPoolIdentity
        {
            Fingerprint = fingerprint, Layers = layout.Layers, KvHeads = layout.KvHeads, HeadSize = layout.HeadSize,
            ElementSize = layout.ElementSize, ChunkTokens = chunkTokens,
        };
        identity.Validate();
        return identity;
    }

    /// <summary>Bytes of one full chunk: keys and values of every layer, <c>2 × L × H × C × D × element size</c>.</summary>
    public long PayloadBytes => 2L * Layers * KvHeads * ChunkTokens * HeadSize * ElementSize;

    /// <summary>Bytes of one slot: header block plus page-aligned payload.</summary>
    public long SlotBytes => StoredFormats.SlotHeaderBytes(ChunkTokens) + StoredFormats.AlignUp(PayloadBytes, StoredFormats.PageSize);

    /// <summary>The layout part as text, e.g. <c>24x2x64 fp16, 128-token chunks</c>.</summary>
    public string LayoutText => $"{Layers}x{KvHeads}x{HeadSize} {(ElementSize == 2 ? "fp16" : ElementSize == 4 ? "fp32" : $"{ElementSize}-byte")}, {ChunkTokens}-token chunks";

    internal ulong LayoutHash => StoredFormats.Checksum64(Encoding.ASCII.GetBytes($"{Layers}x{KvHeads}x{HeadSize}x{ElementSize}x{ChunkTokens}"));

    /// <summary>Throws when a field is out of range.</summary>
    public void Validate()
    {
        if (Layers < 1 || KvHeads < 1 || HeadSize < 1)
            throw new ArgumentException($"Layers, KvHeads and HeadSize must be positive; got {Layers}, {KvHeads}, {HeadSize}.");
        if (ElementSize is not (2 or 4))
            throw new ArgumentException($"ElementSize must be 2 (fp16) or 4 (fp32); got {ElementSize}.");
        if (ChunkTokens < 1 || ChunkTokens > 65536)
            throw new ArgumentOutOfRangeException(nameof(ChunkTokens), ChunkTokens, "ChunkTokens must be between 1 and 65536.");
    }
}
