using System.Security.Cryptography;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;

namespace OrtKvTier.Tests.Storage;

/// <summary>
/// Freezes every persisted format: bytes written from a fixed input equal the checked-in bytes of the format's current
/// version (<c>Golden/NAME.vVERSION.hex</c>), and the checked-in files themselves are frozen by their SHA-256 below. When
/// a layout changes, these tests fail: bump the version (<see cref="StoredFormats.FormatVersion"/>, <see cref="StoredFormats.RemoteVersion"/>),
/// add golden files for the new version (ORTKV_WRITE_GOLDEN=1 writes missing ones; the test still fails, to be looked
/// at) and their hashes to <see cref="Frozen"/>. Never edit an old golden file or its hash: files of older versions
/// must keep being refused by version, which the last tests check on them.
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
    private static readonly JournalCodec Journal = new(Secret);

    /// <summary>
    /// The SHA-256 of every golden file. Adding a file means adding its line; changing a line means a golden file was
    /// edited in place, which is never right: a changed layout gets a new version and new files.
    /// </summary>
    private static readonly Dictionary<string, string> Frozen = new()
    {
        // file name → SHA-256 (hex) of the file as checked in
        ["file-header.v1.hex"] = "4abd531a7d00e660223bca4511204bb953a18891664685e98ff9cfa091c63796",
        ["file-header.v2.hex"] = "2b8139386c8cba2bc46d352a4e36b8b253c6e14c039d320985c2ff9a3eac8bd1",
        ["journal.v1.hex"] = "3a76a3d3c817379d308c6e3bdc17de35b8066b6f3d36a764ebd68b72edbcaab3",
        ["journal.v2.hex"] = "2944cf7d49c209083b178a9c45d7488c07ac779e480763b5bd24cd3f01c90eef",
        ["remote-value.v1.hex"] = "1249ad43c4a5011aaee6a2538ddedc7c3e4e5833c8482fb320b935d03cc602ab",
        ["remote-value.v2.hex"] = "cc3a24dd4943af6ddbddf2876a70d62a4e16a2b4d65ac604891019f6a97c0cff",
        ["remote-value-encrypted.v2.hex"] = "e913705ad4888d052b223b4dedd3d69eea4915b589ceb1b965180b60a3319965",
        ["slot-header.v1.hex"] = "c1f5c3a6fca5e7a4ddac66b30bd6e524ea2026f95d7baae7f3b1833d1ac11e0a",
        ["slot-header.v2.hex"] = "aef3ad73cb6c8fb68ec09e298b51a0dd64b9158ab4d6639bdacba28f4e2d290d",
        ["snapshot.v1.hex"] = "23472540dd2d2123d86e4424ca852dea105ec1650231957bd4c377a1fef31a2e",
        ["snapshot.v2.hex"] = "73f545382861539713105968029494fd496282caca0066cc83487e22c93415f3",
        ["file-header.v3.hex"] = "ddc3026c884314e1b19b4a69e7b7f208f21e00ebbca43d830c6b63d82cc1ce0d",
        ["slot-header.v3.hex"] = "7915a70859a778863b87720b69427a013a725df29e599499fe9fa82385da5c95",
        ["payload.v3.hex"] = "9c603c62146215abe51712a4737a9aaaa41e4d8d23731cee7b2c44f94c10487d",
        ["payload-encrypted.v3.hex"] = "890da69df0f9f70866a27d2158c083cf5fe1d6b876711a6e4dcb4b127200ebc2",
        ["journal.v3.hex"] = "3c123b7b84751784b48d1af241786ce3dd59450bbc1a29cc0c1fa55dfbd0ca6b",
        ["snapshot.v3.hex"] = "72d3e1be41561a2ddf7926f89d3e931d4d977f13ed30a7383ca4c830b52f93df",
        ["remote-value.v3.hex"] = "f928bf73dacb111ee42abe1f1b8e04b4a43b6c4e67149fc8de79d957e16f2855",
        ["remote-value-encrypted.v3.hex"] = "0d74f4f9af5c736a3114a9d46edd95c586a714d7c753fc2238b09573b139fa45",
        ["file-header-int8.v3.hex"] = "790d6438c5e45f67eb2b4c90fed46f09c31ba5dc0a062bc5736656dab84778a0",
        ["slot-header-int8.v3.hex"] = "e22faee423c42f6a1d35ab218ef378a64a7770ac6a3b4248bda25dea8ce5e538",
        ["chunk-int8.v3.hex"] = "034e5c188349a58c5fd99e43fe1ab547bac0e851b51d8fb087136b2791609b2c",
        ["chunk-int4.v3.hex"] = "79ad9123c1f47d46fc6a1a01c90b521d976f73e789e8e346be32ca2a12bf562a",
    };

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

    /// <summary>
    /// A disk payload of one and a half seal blocks as stored (clear and encrypted): the golden holds the payload tag the
    /// slot header carries and the SHA-256 of the stored bytes, so a change to the block size, the block MAC, how tags
    /// combine or the cipher fails here.
    /// </summary>
    [Fact]
    public void DiskPayload()
    {
        var payload = Enumerable.Range(0, StoredFormats.SealBlockBytes * 3 / 2).Select(i => (byte)(i * 7 + (i >> 11))).ToArray();
        foreach (var encrypted in new[] { false, true })
        {
            var seal = Secret.SealFor(Nonce, encrypted);
            var stored = new byte[payload.Length];
            var tag = PayloadSeal.SealInto(payload, stored, seal);
            var golden = new byte[16 + 32];
            StoredFormats.WriteUInt128(golden, tag);
            SHA256.HashData(stored, golden.AsSpan(16));
            AssertGolden(encrypted ? "payload-encrypted" : "payload", StoredFormats.FormatVersion, golden);

            var opened = new byte[payload.Length];
            Assert.Equal(tag, PayloadSeal.OpenInto(stored, opened, seal));
            Assert.Equal(payload, opened);
            Assert.Equal(encrypted, !stored.AsSpan().SequenceEqual(payload));
        }
    }

    /// <summary>
    /// The encoded pools' layouts (version 3, which they came with): the file header's encoding field, a slot header whose
    /// layout hash names the encoding, and a chunk of fixed values encoded in 8 and 4 bits (minimums, scales, codes per run).
    /// </summary>
    [Fact]
    public void EncodedPoolHeadersAndChunks()
    {
        var int8 = Identity with { Encoding = OrtKvTier.Tensors.KvEncoding.Int8 };
        AssertGolden("file-header-int8", StoredFormats.FormatVersion, global::OrtKvTier.Storage.FileHeader.Write(int8, int8.SlotBytes, 5, PoolId, writerEpoch: 2));
        var header = new byte[StoredFormats.SlotHeaderBytes(int8.ChunkTokens)];
        int used = global::OrtKvTier.Storage.SlotHeader.Write(header, int8, Secret, Entry.Slot, Entry.Generation, Key, Tokens,
            new SealedPayload(int8.PayloadBytes, new UInt128(0xabcdef, 0x123456), Nonce, Secret.SealFor(Nonce, encrypted: false)));
        AssertGolden("slot-header-int8", StoredFormats.FormatVersion, header[..used]);
        var values = Enumerable.Range(0, (int)(Identity.ExactPayloadBytes / 2)).Select(i => (Half)(MathF.Sin(i * 0.37f) * (1 + i % 5))).ToArray();
        var exact = System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        foreach (var encoding in new[] { OrtKvTier.Tensors.KvEncoding.Int8, OrtKvTier.Tensors.KvEncoding.Int4 })
        {
            var codec = OrtKvTier.Tensors.KvCodec.For(encoding, Identity.Shape, Identity.ChunkTokens)!;
            var encoded = new byte[codec.EncodedBytes];
            Assert.True(codec.Encode(exact, encoded));
            AssertGolden($"chunk-{encoding.ToString().ToLowerInvariant()}", StoredFormats.FormatVersion, encoded);
        }
        Assert.Equal(OrtKvTier.Tensors.KvEncoding.Int8, global::OrtKvTier.Storage.FileHeader.Read(Read("file-header-int8", StoredFormats.FormatVersion), "golden").Identity.Encoding);
    }

    [Fact]
    public void JournalHeaderAndRecords()
    {
        byte[] journal =
        [
            .. Journal.Header(PoolId, epoch: 6),
            .. Journal.Reserve(Key, Entry.Slot, Entry.Generation, unixMs: 1_790_000_000_123),
            .. Journal.Put(Entry),
            .. Journal.Remove(Entry),
            .. Journal.Touch(Key),
            .. Journal.Release(Entry.Slot, Entry.Generation),
            .. Journal.Clear(),
        ];
        AssertGolden("journal", StoredFormats.FormatVersion, journal);
    }

    [Fact]
    public void Snapshot() =>
        AssertGolden("snapshot", StoredFormats.FormatVersion, Journal.Snapshot(PoolId, epoch: 6, [Entry, Entry with { Key = new ChunkKey(42), Slot = 4 }]));

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

        var snapshot = Journal.ReadSnapshot(Read("snapshot", StoredFormats.FormatVersion), PoolId);
        Assert.NotNull(snapshot);
        Assert.Equal(6, snapshot.Value.Epoch);
        Assert.Equal([Entry, Entry with { Key = new ChunkKey(42), Slot = 4 }], snapshot.Value.Entries);

        var journal = Read("journal", StoredFormats.FormatVersion);
        Assert.Equal(6, Journal.ReadEpoch(journal, PoolId));
        var records = new List<JournalRecord>();
        var (end, applied, skipped) = Journal.Read(journal.AsSpan(StoredFormats.JournalHeaderBytes), StoredFormats.JournalHeaderBytes, r => { records.Add(r); return true; });
        Assert.Equal((journal.Length, 6, 0), (end, applied, skipped));
        Assert.Equal(
            [StoredFormats.JournalRecordKind.Reserve, StoredFormats.JournalRecordKind.Put, StoredFormats.JournalRecordKind.Remove, StoredFormats.JournalRecordKind.Touch,
             StoredFormats.JournalRecordKind.Release, StoredFormats.JournalRecordKind.Clear],
            records.Select(r => r.Kind));
        Assert.Equal(Entry, records[1].Entry);
        Assert.Equal(1_790_000_000_123, records[0].UnixMs);

        var header = new byte[StoredFormats.SlotHeaderBytes(Identity.ChunkTokens)];
        Read("slot-header", StoredFormats.FormatVersion).CopyTo(header, 0);
        Assert.Null(global::OrtKvTier.Storage.SlotHeader.Check(header, Identity, Secret, Entry.Slot, Entry.Generation, Key, checkTokens: true, Tokens, 4096, out var found, out _));
        Assert.Equal(Entry, found);
    }

    [Fact]
    public void GoldenFilesAreFrozen()
    {
        var directory = Path.Combine(TestPaths.RepoRoot, "tests", "OrtKvTier.Tests", "Storage", "Golden");
        var onDisk = Directory.GetFiles(directory, "*.hex").Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal).ToList();
        var problems = new List<string>();
        foreach (var name in onDisk)
        {
            var hash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(Path.Combine(directory, name))));
            if (!Frozen.TryGetValue(name, out var frozen)) problems.Add($"{name} is not frozen yet: add [\"{name}\"] = \"{hash}\" to Frozen");
            else if (frozen != hash) problems.Add($"{name} was edited in place (SHA-256 {hash}, frozen {frozen}): restore it; a layout change bumps the version and adds new files");
        }
        problems.AddRange(Frozen.Keys.Except(onDisk).Select(name => $"{name} is frozen but missing"));
        Assert.True(problems.Count == 0, string.Join("\n", problems));
    }

    /// <summary>Files and values of every earlier version are refused by version, with a message that names both versions.</summary>
    [Theory]
    [InlineData(1u)]
    [InlineData(2u)]
    public void EarlierVersionsAreRefusedByVersionNamingBoth(uint version)
    {
        string both = $"format version {version}; this library reads version {StoredFormats.FormatVersion}";
        var mismatch = Assert.Throws<SlotPoolMismatchException>(() => global::OrtKvTier.Storage.FileHeader.Read(Read("file-header", version), "slots.bin"));
        Assert.Contains(both, mismatch.Message);
        Assert.Contains("prune --other-versions", mismatch.Message);
        Assert.Equal(version, mismatch.FoundVersion);

        var header = new byte[StoredFormats.SlotHeaderBytes(Identity.ChunkTokens)];
        Read("slot-header", version).CopyTo(header, 0);
        Assert.Contains(both, global::OrtKvTier.Storage.SlotHeader.Check(header, Identity, Secret, Entry.Slot, null, null, checkTokens: false, [], 4096, out _, out _));

        Assert.Null(Journal.ReadEpoch(Read("journal", version), PoolId));
        Assert.Null(Journal.ReadSnapshot(Read("snapshot", version), PoolId));

        string remoteBoth = $"format version {version}; this library reads version {StoredFormats.RemoteVersion}";
        Assert.Contains(remoteBoth, RemoteEntry.Decode(Read("remote-value", version), Identity, Secret, Key, Tokens, new byte[64]));
        Assert.Equal(version, RemoteEntry.VersionOf(Read("remote-value", version)));
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
