using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// Freezes every persisted format: bytes written from a fixed input equal the checked-in bytes of the
/// format's current version (<c>Golden/NAME.vVERSION.hex</c>). When one fails, the format changed: bump
/// its version (old files are then refused, not misread) and add the new golden file; never edit an old one.
/// A missing golden file is written when ORTKV_WRITE_GOLDEN=1 (and the test still fails, to be looked at).
/// </summary>
public sealed class PersistedFormatTests
{
    private static readonly SlotPoolIdentity Identity = SlotPoolIdentity.For(
        new ModelFingerprint(new UInt128(0x0123456789abcdef, 0xfedcba9876543210)),
        new KvLayout
        {
            Layers = 2, KvHeads = 2, HeadSize = 16, ElementType = KvElementType.Float16, SharedBuffer = false, MaxLength = 64,
            PastKeyNames = ["pk0", "pk1"], PastValueNames = ["pv0", "pv1"], PresentKeyNames = ["k0", "k1"], PresentValueNames = ["v0", "v1"],
        },
        chunkTokens: 4);

    private static readonly ChunkKey Key = new(new UInt128(0x1111222233334444, 0x5555666677778888));
    private static readonly int[] Tokens = [7, 300, 65_000, 2];
    private static readonly SlotEntry Entry = new(Key, Slot: 3, Generation: (5UL << 32) | 9, TokenCount: 4, PayloadLength: 1024);
    private const ulong PoolId = 0x0a0b0c0d0e0f1011;
    private static readonly CacheSecret Secret = new(Enumerable.Range(0, 32).Select(i => (byte)(i * 3 + 1)).ToArray());
    private static readonly UInt128 Nonce = new(0x9999aaaabbbbcccc, 0xddddeeeeffff0000);
    private static readonly IndexJournal Journal = new(Secret);

    [Fact]
    public void FileHeader() =>
        AssertGolden("file-header", StoredFormats.FormatVersion, global::OrtKvTier.Storage.FileHeader.Write(Identity, Identity.SlotBytes, 5, PoolId, writerEpoch: 2));

    [Fact]
    public void SlotHeader()
    {
        var header = new byte[StoredFormats.SlotHeaderBytes(Identity.ChunkTokens)];
        int used = global::OrtKvTier.Storage.SlotHeader.Write(header, Identity, Secret, Entry.Slot, Entry.Generation, Key, Tokens,
            new SealedPayload(Entry.PayloadLength, new UInt128(0xabcdef, 0x123456), Nonce, Secret.SealFor(Nonce, encrypted: false)));
        Assert.All(header[used..], b => Assert.Equal(0, b));
        AssertGolden("slot-header", StoredFormats.FormatVersion, header[..used]);
    }

    [Fact]
    public void JournalHeaderAndRecords()
    {
        byte[] journal =
        [
            .. Journal.Header(PoolId, epoch: 6),
            .. Journal.PutRecord(Entry),
            .. Journal.RemoveRecord(Key),
            .. Journal.TouchRecord(Key),
            .. Journal.ClearRecord(),
        ];
        AssertGolden("journal", StoredFormats.FormatVersion, journal);
    }

    [Fact]
    public void Snapshot() =>
        AssertGolden("snapshot", StoredFormats.FormatVersion,
            Journal.Snapshot(PoolId, epoch: 6, nextGeneration: (5UL << 32) | 10, [Entry, Entry with { Key = new ChunkKey(42), Slot = 4 }]));

    [Fact]
    public void RemoteValue()
    {
        var payload = Enumerable.Range(0, 64).Select(i => (byte)(i * 7)).ToArray();
        AssertGolden("remote-value", RemoteEntry.Version, RemoteEntry.Encode(Identity, Secret, encrypt: false, Key, Tokens, payload, Nonce));
        AssertGolden("remote-value-encrypted", RemoteEntry.Version, RemoteEntry.Encode(Identity, Secret, encrypt: true, Key, Tokens, payload, Nonce));
    }

    /// <summary>The golden bytes decode back to the fixed input (so the files are also readable evidence of the layout).</summary>
    [Fact]
    public void GoldenValuesReadBack()
    {
        foreach (var name in new[] { "remote-value", "remote-value-encrypted" })
        {
            var remote = Read(name, RemoteEntry.Version);
            var payload = new byte[64];
            Assert.Null(RemoteEntry.Decode(remote, Identity, Secret, Key, Tokens, payload));
            Assert.Equal(Enumerable.Range(0, 64).Select(i => (byte)(i * 7)), payload);
            Assert.NotNull(RemoteEntry.Decode(remote, Identity, new CacheSecret(new byte[32]), Key, Tokens, payload)); // another key: a miss
        }

        var index = new SlotIndex(8);
        Assert.Equal(6, Journal.LoadSnapshot(Read("snapshot", StoredFormats.FormatVersion), PoolId, index));
        Assert.Equal(2, index.Count);

        var header = new byte[StoredFormats.SlotHeaderBytes(Identity.ChunkTokens)];
        Read("slot-header", StoredFormats.FormatVersion).CopyTo(header, 0);
        Assert.Null(global::OrtKvTier.Storage.SlotHeader.Check(header, Identity, Secret, Entry.Slot, Entry.Generation, Key, checkTokens: true, Tokens, 4096, out var found, out _));
        Assert.Equal(Entry, found);
    }

    private static string GoldenPath(string name, uint version) =>
        Path.Combine(TestPaths.RepoRoot, "tests", "OrtKvTier.Tests", "Storage", "Golden", $"{name}.v{version}.hex");

    private static byte[] Read(string name, uint version) =>
        Convert.FromHexString(string.Concat(File.ReadAllLines(GoldenPath(name, version)).Select(l => l.Trim())));

    private static void AssertGolden(string name, uint version, byte[] actual)
    {
        var path = GoldenPath(name, version);
        if (!File.Exists(path))
        {
            if (Environment.GetEnvironmentVariable("ORTKV_WRITE_GOLDEN") == "1")
                File.WriteAllLines(path, Convert.ToHexString(actual).Chunk(64).Select(c => new string(c)));
            Assert.Fail($"No golden file {path} for {name} version {version}. A format change needs a version bump and a new golden file (ORTKV_WRITE_GOLDEN=1 writes a missing one).");
        }
        var expected = Read(name, version);
        Assert.True(expected.AsSpan().SequenceEqual(actual),
            $"{name} v{version} changed: {actual.Length} bytes written, {expected.Length} in {path}; first difference at byte {FirstDifference(expected, actual)}. " +
            "Bump the format version and add a golden file for it; do not edit this one.");
    }

    private static int FirstDifference(byte[] a, byte[] b)
    {
        int n = Math.Min(a.Length, b.Length);
        for (int i = 0; i < n; i++) if (a[i] != b[i]) return i;
        return n;
    }
}
