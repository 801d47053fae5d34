using System.Text;
using OrtKvTier.Model;

namespace OrtKvTier.Storage;

/// <summary>
/// What stored bytes belong to: the model fingerprint, the KV shape and the chunk length. A pool (or a remote
/// value) for another identity is refused. The slot size follows from it.
/// </summary>
public sealed record SlotPoolIdentity
{
    private SlotPoolIdentity(ModelFingerprint fingerprint, KvShape shape, int chunkTokens)
    {
        Fingerprint = fingerprint;
        Shape = shape;
        ChunkTokens = chunkTokens;
    }

    /// <summary>The identity for a fingerprint, a layout and a chunk length.</summary>
    public static SlotPoolIdentity For(ModelFingerprint fingerprint, KvLayout layout, int chunkTokens)
    {
        ArgumentNullException.ThrowIfNull(layout);
        return new SlotPoolIdentity(fingerprint, layout.Shape, chunkTokens);
    }

    internal static SlotPoolIdentity For(ModelFingerprint fingerprint, KvShape shape, int chunkTokens) => new(fingerprint, shape, chunkTokens);

    /// <summary>Model fingerprint.</summary>
    public ModelFingerprint Fingerprint { get; init; }

    /// <summary>Tokens in a full chunk, 1 to 65536.</summary>
    public int ChunkTokens
    {
        get;
        init => field = value is >= 1 and <= 65536 ? value
            : throw new ArgumentOutOfRangeException(nameof(ChunkTokens), value, "ChunkTokens must be between 1 and 65536.");
    }

    internal KvShape Shape
    {
        get;
        init
        {
            value.Validate();
            field = value;
        }
    }

    /// <summary>Bytes of one full chunk: keys and values of every layer, <c>2 × L × H × C × D × element size</c>.</summary>
    public long PayloadBytes => Shape.BytesPerToken * ChunkTokens;

    /// <summary>Bytes of one slot: header block plus page-aligned payload.</summary>
    public long SlotBytes => StoredFormats.SlotHeaderBytes(ChunkTokens) + StoredFormats.AlignUp(PayloadBytes, StoredFormats.PageSize);

    /// <summary>The layout part as text, e.g. <c>24x2x64 fp16, 128-token chunks</c>.</summary>
    public string LayoutText => $"{Shape.Text}, {ChunkTokens}-token chunks";

    /// <summary>What slot headers and remote values record of the layout (frozen: <c>LxHxDxExC</c> hashed).</summary>
    internal ulong LayoutHash => StoredFormats.Checksum64(Encoding.ASCII.GetBytes($"{Shape.Layers}x{Shape.KvHeads}x{Shape.HeadSize}x{Shape.ElementSize}x{ChunkTokens}"));
}
