using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>
/// What stored bytes belong to: the model fingerprint, the KV shape, the chunk length and the encoding of the stored KV.
/// A pool (or a remote value) for another identity is refused: an entry of one encoding is never read as another. The
/// slot size follows from it.
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

    /// <summary>How the KV is stored (<see cref="KvEncoding.Exact"/> unless an approximate encoding was asked for).</summary>
    public KvEncoding Encoding
    {
        get;
        init => field = Enum.IsDefined(value) ? value : throw new ArgumentOutOfRangeException(nameof(Encoding), value, "Expected exact, int8 or int4.");
    }

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

    /// <summary>Bytes of one full chunk as stored: <see cref="ExactPayloadBytes"/>, or what its encoding makes of them.</summary>
    public long PayloadBytes => KvCodec.For(Encoding, Shape, ChunkTokens)?.EncodedBytes ?? ExactPayloadBytes;

    /// <summary>Bytes of one full chunk in the model's own element type: keys and values of every layer, <c>2 × L × H × C × D × element size</c>.</summary>
    public long ExactPayloadBytes => Shape.BytesPerToken * ChunkTokens;

    /// <summary>Bytes of one slot: header block plus page-aligned payload.</summary>
    public long SlotBytes => StoredFormats.SlotHeaderBytes(ChunkTokens) + StoredFormats.AlignUp(PayloadBytes, StoredFormats.PageSize);

    /// <summary>The layout part as text, e.g. <c>24x2x64 fp16, 128-token chunks</c>.</summary>
    public string LayoutText => $"{Shape.Text}, {ChunkTokens}-token chunks" + (Encoding == KvEncoding.Exact ? "" : $", stored {Encoding.Name()}");

    /// <summary>
    /// What slot headers and remote values record of the layout and encoding (frozen: <c>LxHxDxExC</c> hashed, with
    /// <c>xint8</c> or <c>xint4</c> appended for an approximate encoding), so every entry's MAC covers its encoding.
    /// </summary>
    internal ulong LayoutHash => StoredFormats.Checksum64(System.Text.Encoding.ASCII.GetBytes(
        $"{Shape.Layers}x{Shape.KvHeads}x{Shape.HeadSize}x{Shape.ElementSize}x{ChunkTokens}" + (Encoding == KvEncoding.Exact ? "" : "x" + Encoding.Name())));
}
