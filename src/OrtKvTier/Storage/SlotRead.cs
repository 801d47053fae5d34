using OrtKvTier.Security;
using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>A verified slot read in progress (<see cref="SlotPool.BeginRead"/>): the entry, its stored payload tag and seal, and the tag of each block read so far.</summary>
internal sealed class SlotRead(SlotEntry entry, UInt128 tag, EntrySeal seal, long payloadLength, PayloadScatter scatter)
{
    public SlotEntry Entry { get; } = entry;
    public UInt128 Tag { get; } = tag;
    public EntrySeal Seal { get; } = seal;
    public long PayloadLength { get; } = payloadLength;
    public PayloadScatter Scatter { get; } = scatter;
    public int Blocks { get; } = PayloadSeal.BlockCount(payloadLength);
    public byte[] BlockTags { get; } = new byte[PayloadSeal.BlockCount(payloadLength) * StoredFormats.MacBytes];
}
