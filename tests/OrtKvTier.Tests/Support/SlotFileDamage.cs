namespace OrtKvTier.Tests.Support;

/// <summary>Damages pool files in place, the way bad disks and torn writes do.</summary>
internal static class SlotFileDamage
{
    public const int FileHeaderBytes = 4096;
    public static readonly long SlotBytes = TestPayloads.Identity.SlotBytes;

    public static void FlipByte(string directory, int slot, long offsetInSlot, byte mask = 0x10) =>
        FlipAt(Path.Combine(directory, "slots.bin"), FileHeaderBytes + slot * SlotBytes + offsetInSlot, mask);

    public static void FlipAt(string path, long offset, byte mask = 0x10)
    {
        using var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Position = offset;
        int b = file.ReadByte();
        file.Position = offset;
        file.WriteByte((byte)(b ^ mask));
    }

    public static void ZeroPage(string directory, int slot, long offsetInSlot)
    {
        using var file = new FileStream(Path.Combine(directory, "slots.bin"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        file.Position = FileHeaderBytes + slot * SlotBytes + offsetInSlot / 4096 * 4096;
        file.Write(new byte[4096]);
    }
}
