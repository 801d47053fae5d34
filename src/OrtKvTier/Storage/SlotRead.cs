using OrtKvTier.Tensors;

namespace OrtKvTier.Storage;

/// <summary>A verified slot read in progress (<see cref="SlotPool.BeginRead"/>): the entry, its stored checksum, and the hash of each block read so far.</summary>
internal sealed class SlotRead(SlotEntry entry, UInt128 checksum, long payloadLength, PayloadScatter scatter)
{
    public SlotEntry Entry { get; } = entry;
    public UInt128 Checksum { get; } = checksum;
    public long PayloadLength { get; } = payloadLength;
    public PayloadScatter Scatter { get; } = scatter;
    public int Blocks { get; } = PayloadChecksum.BlockCount(payloadLength);
    public byte[] BlockHashes { get; } = new byte[PayloadChecksum.BlockCount(payloadLength) * 16];
}
