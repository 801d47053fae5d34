using System.Buffers.Binary;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using OrtKvTier.Security;
using static OrtKvTier.Storage.StoredFormats;

namespace OrtKvTier.Storage;

/// <summary>
/// A pool's data file (<see cref="StoredFormats.DataFileName"/> on its medium: header page, then fixed-size slots):
/// opens or creates it, checks its header against the identity asked for, and reads and writes slot headers and
/// payloads with positional I/O. Owns the device: <see cref="Dispose"/> closes it.
/// </summary>
internal sealed class SlotFile : IDisposable
{
    private readonly bool _encrypt;

    private SlotFile(IStorageMedium medium, IStorageDevice data, FileHeaderFields header, SlotPoolOptions options)
    {
        Medium = medium;
        Data = data;
        Header = header;
        Secret = options.Secret ?? throw new InvalidOperationException("The pool's secret is resolved before its files are opened.");
        _encrypt = options.Encrypt;
    }

    /// <summary>The key that authenticates (and may encrypt) this pool's entries.</summary>
    public CacheSecret Secret { get; }

    /// <summary>Where the pool's files are.</summary>
    public IStorageMedium Medium { get; }

    public string DataPath => Path.Combine(Medium.Location, DataFileName);
    public FileHeaderFields Header { get; }

    /// <summary>The slot count before this open resized the pool to the capacity asked for; null when it did not.</summary>
    public long? ResizedFrom { get; private init; }

    /// <summary>Whether this open created the data file (so no slot holds an entry yet).</summary>
    public bool Created { get; private init; }

    /// <summary>The data file, for positional reads and writes; valid until <see cref="Dispose"/>.</summary>
    public IStorageDevice Data { get; }

    public long SlotOffset(int slot) => FileHeaderBytes + slot * Header.SlotBytes;

    /// <summary>Bytes reserved for each slot's header.</summary>
    public int SlotHeaderBytes => StoredFormats.SlotHeaderBytes(Header.Identity.ChunkTokens);

    /// <summary>Largest payload a slot holds.</summary>
    public long PayloadCapacity => Header.SlotBytes - SlotHeaderBytes;

    public long PayloadOffset(int slot) => SlotOffset(slot) + SlotHeaderBytes;

    /// <summary>
    /// Checks the header of <paramref name="expected"/>'s slot: against its key and generation, the caller's
    /// token ids when given, or (<paramref name="anyKey"/>) only for being a valid header. Null when it fits; else why not.
    /// </summary>
    public string? CheckSlot(SlotEntry expected, out SlotEntry found, out ChunkRecordFields fields, bool checkTokens = false, ReadOnlySpan<int> tokens = default, bool anyKey = false)
    {
        // One copy of the header, so every check sees the same bytes.
        Span<byte> header = stackalloc byte[SlotHeaderBytes];
        Data.ReadFully(header, SlotOffset(expected.Slot));
        var failure = SlotHeader.Check(header, Header.Identity, Secret, expected.Slot, anyKey ? null : expected.Generation, anyKey ? null : expected.Key,
            checkTokens, tokens, PayloadCapacity, out found, out fields);
        if (failure is null && !anyKey && found.TokenCount != expected.TokenCount) return "token count differs from the index";
        return failure;
    }

    /// <summary>
    /// Writes a slot: the payload, sealed (under a fresh entry nonce) and written block by block on up to
    /// <paramref name="parallelism"/> threads, then the header that names it (so a torn write never reads as the entry).
    /// </summary>
    public void WriteSlot(SlotEntry entry, ReadOnlySpan<int> tokens, ReadOnlySpan<byte> payload, int parallelism)
    {
        var nonce = CacheSecret.NewEntryNonce();
        var seal = Secret.SealFor(nonce, _encrypt);
        var tag = PayloadSeal.SealAndWrite(payload, seal, Data, PayloadOffset(entry.Slot), parallelism);
        var header = new byte[SlotHeaderBytes];
        int used = SlotHeader.Write(header, Header.Identity, Secret, entry.Slot, entry.Generation, entry.Key, tokens, new SealedPayload(payload.Length, tag, nonce, seal));
        Data.Write(header.AsSpan(0, SlotHeaderWriteBytes(used)), SlotOffset(entry.Slot));
    }

    /// <summary>Checks an indexed slot's header and the tag of its whole payload; null when intact, else why not.</summary>
    public string? VerifySlot(SlotEntry entry, int parallelism, out long payloadLength)
    {
        var failure = CheckSlot(entry, out var found, out var fields)
            ?? (found.PayloadLength != entry.PayloadLength ? $"the index says {entry.PayloadLength} payload bytes, the slot {found.PayloadLength}" : null)
            ?? (PayloadSeal.TagOf(Data, PayloadOffset(entry.Slot), found.PayloadLength, ChunkRecord.SealOf(fields, Secret), parallelism) == fields.PayloadTag
                ? null : "payload tag mismatch (damaged, forged, or rewritten)");
        payloadLength = found.PayloadLength;
        return failure;
    }

    /// <summary>The token ids an indexed slot's header holds, decrypted; null when its header does not check out.</summary>
    public int[]? ReadTokens(SlotEntry entry)
    {
        Span<byte> header = stackalloc byte[SlotHeaderBytes];
        Data.ReadFully(header, SlotOffset(entry.Slot));
        return SlotHeader.Check(header, Header.Identity, Secret, entry.Slot, entry.Generation, entry.Key, false, default, PayloadCapacity, out _, out var fields) is null
            ? ChunkRecord.Tokens(header, StoredFormats.SlotHeader, fields, Secret)
            : null;
    }

    /// <summary>Every slot whose header is valid, oldest write first: what recovery rebuilds the index from.</summary>
    public List<SlotEntry> ScanSlots()
    {
        var found = new List<SlotEntry>();
        for (int slot = 0; slot < Header.SlotCount; slot++)
            if (CheckSlot(new SlotEntry(default, slot, 0, 0, 0), out var entry, out _, anyKey: true) is null)
                found.Add(entry);
        return [.. found.OrderBy(e => e.Generation)];
    }

    /// <summary>Overwrites a slot header's magic: the slot holds no entry any more, whatever the index says later.</summary>
    public void Invalidate(int slot) => Data.Write(stackalloc byte[8], SlotOffset(slot));

    /// <summary>Zeroes every slot and returns their disk blocks (the file is cut to its header and extended again, sparse).</summary>
    public void ZeroSlots()
    {
        long length = Data.Length;
        Data.SetLength(FileHeaderBytes);
        Data.SetLength(length);
    }

    /// <summary>fsync of the data file.</summary>
    public void FlushToDisk() => Data.Flush();

    public void Dispose() => Data.Dispose();

    /// <summary>
    /// Opens the data file for <see cref="SlotPoolOptions.Identity"/> as its writer (the caller holds the writer lock),
    /// bumping the writer epoch so this process's generations are its own; creates it (sparse: it grows on demand as
    /// slots are written) when missing or, per <see cref="SlotPoolOptions.OnMismatch"/>, when it belongs to another
    /// identity or format. A capacity the options name grows the file (shrinking is done by copying, before).
    /// </summary>
    public static SlotFile OpenWriter(SlotPoolOptions options, IStorageMedium medium)
    {
        var identity = options.Identity!;
        if (medium.Exists(DataFileName))
        {
            var mismatch = DescribeMismatch(medium, identity, out var existing);
            if (mismatch is not null && RepairedHeader(medium, identity, options.Secret!) is { } repaired)
            {
                options.Logger?.LogWarning("Slot pool {Directory}: its file header was damaged ({Mismatch}); rewritten from the pool's own layout, its entries kept", medium.Location, mismatch);
                (mismatch, existing) = (null, repaired);
            }
            if (mismatch is not null && options.OnMismatch == MismatchPolicy.Refuse)
                throw new SlotPoolMismatchException($"{Path.Combine(medium.Location, DataFileName)}: {mismatch} Open with MismatchPolicy.Recreate to replace it, or use another directory.");
            if (mismatch is not null)
            {
                options.Logger?.LogWarning("Slot pool {Directory}: recreating because {Mismatch}", medium.Location, mismatch);
                DeletePoolFiles(medium);
            }
            else
            {
                var data = medium.Open(DataFileName, DeviceAccess.ReadWrite);
                try
                {
                    long slots = SlotsFor(options, existing!.SlotBytes) ?? existing.SlotCount;
                    var header = existing with { WriterEpoch = existing.WriterEpoch + 1, SlotCount = slots };
                    // Grown: the added slots are sparse (shrinking was done by SlotPool.Open, copying the recent entries).
                    if (slots != existing.SlotCount) data.SetLength(FileHeaderBytes + slots * header.SlotBytes);
                    // No fsync: the epoch only makes generations distinct; integrity rests on key and checksums.
                    data.Write(FileHeader.Write(identity, header.SlotBytes, (int)header.SlotCount, header.PoolId, header.WriterEpoch), 0);
                    return new SlotFile(medium, data, header, options) { ResizedFrom = slots != existing.SlotCount ? existing.SlotCount : null };
                }
                catch
                {
                    data.Dispose();
                    throw;
                }
            }
        }
        var created = Create(options, medium, identity);
        return new SlotFile(medium, medium.Open(DataFileName, DeviceAccess.ReadWrite), created, options) { Created = true };
    }

    /// <summary>
    /// The header of a pool whose header page was damaged (its checksum fails) in a few bytes only, rebuilt: the layout from the
    /// identity being opened, the slot count from the file's length, the pool id from the journal (authenticated) or the
    /// page, and a writer epoch no writer alive uses (random in the upper half: epochs count up from 1, so it is none a
    /// writer used before). Null when the page is not a damaged copy of this pool's header: a real mismatch stays one.
    /// Slots still authenticate under the key and layout, so a wrong guess costs misses, never wrong bytes.
    /// </summary>
    private static FileHeaderFields? RepairedHeader(IStorageMedium medium, SlotPoolIdentity identity, CacheSecret secret)
    {
        long length = medium.Identify(DataFileName)?.Length ?? 0, slots = (length - FileHeaderBytes) / identity.SlotBytes;
        if (length <= FileHeaderBytes || (length - FileHeaderBytes) % identity.SlotBytes != 0 || slots > int.MaxValue) return null;
        var page = new byte[FileHeaderBytes];
        using (var data = medium.Open(DataFileName, DeviceAccess.Read))
            if (data.ReadFully(page, 0) < FileHeaderBytes) return null;
        if (!FileHeader.IsDamagedCopyOf(page, identity, (int)slots)) return null;
        ulong? journalPoolId = null;
        if (medium.Exists(JournalFileName))
        {
            var journal = new byte[JournalHeaderBytes];
            using var file = medium.Open(JournalFileName, DeviceAccess.Read);
            if (file.ReadFully(journal, 0) == JournalHeaderBytes) journalPoolId = new JournalCodec(secret).ReadPoolId(journal);
        }
        // A medium that cannot tell liveness says every writer is alive: a few picks, then the last (a collision is 1 in 2^31).
        uint epoch = 0;
        for (int pick = 0; pick < 8 && (pick == 0 || medium.IsAlive(LivenessFileName, epoch)); pick++)
            epoch = (uint)Random.Shared.NextInt64(1L << 31, uint.MaxValue - (1L << 16));
        // OpenWriter bumps the epoch it is given.
        return new FileHeaderFields(FormatVersion, identity, identity.SlotBytes, slots,
            journalPoolId ?? BinaryPrimitives.ReadUInt64LittleEndian(page.AsSpan(FhPoolId)), epoch - 1);
    }

    /// <summary>What <see cref="OpenWriter"/> checks of an existing data file, without the lock (it checks again under it): throws when it would refuse.</summary>
    public static void CheckWriterOpen(SlotPoolOptions options, IStorageMedium medium)
    {
        if (medium.Exists(DataFileName) && DescribeMismatch(medium, options.Identity!, out _) is { } mismatch && options.OnMismatch == MismatchPolicy.Refuse)
            throw new SlotPoolMismatchException($"{Path.Combine(medium.Location, DataFileName)}: {mismatch} Open with MismatchPolicy.Recreate to replace it, or use another directory.");
    }

    /// <summary>Opens the data file for reading (no lock), checking it against <see cref="SlotPoolOptions.Identity"/> when given.</summary>
    public static SlotFile OpenReader(SlotPoolOptions options, IStorageMedium medium)
    {
        var dataPath = Path.Combine(medium.Location, DataFileName);
        if (!medium.Exists(DataFileName))
            throw new FileNotFoundException($"No slot pool in {medium.Location}: {DataFileName} is missing. A writer creates it.", dataPath);
        FileHeaderFields header;
        if (options.Identity is { } identity)
        {
            var mismatch = DescribeMismatch(medium, identity, out var existing);
            if (mismatch is not null) throw new SlotPoolMismatchException($"{dataPath}: {mismatch} A read-only handle cannot recreate it.");
            header = existing!;
        }
        else
        {
            header = ReadHeaderOf(medium);
            CheckLength(dataPath, header, medium.Identify(DataFileName)?.Length ?? 0);
        }
        return new SlotFile(medium, medium.Open(DataFileName, DeviceAccess.Read), header, options);
    }

    /// <summary>The header of the data file on <paramref name="medium"/>; throws <see cref="SlotPoolMismatchException"/> saying what is wrong.</summary>
    public static FileHeaderFields ReadHeaderOf(IStorageMedium medium)
    {
        using var data = medium.Open(DataFileName, DeviceAccess.Read);
        var page = new byte[FileHeaderBytes];
        int read = data.ReadFully(page, 0);
        return FileHeader.Read(page.AsSpan(0, read), Path.Combine(medium.Location, DataFileName));
    }

    /// <summary>Removes every file of a pool on <paramref name="medium"/> (best effort; the lock file stays).</summary>
    public static void DeletePoolFiles(IStorageMedium medium)
    {
        foreach (var name in medium.Names())
            if (name is DataFileName or JournalFileName or SnapshotFileName || name.EndsWith(TemporarySuffix, StringComparison.Ordinal))
                medium.Delete(name);
    }

    /// <summary>Null when the file matches; else a sentence naming the expected and found values.</summary>
    private static string? DescribeMismatch(IStorageMedium medium, SlotPoolIdentity expected, out FileHeaderFields? header)
    {
        header = null;
        FileHeaderFields found;
        try
        {
            found = ReadHeaderOf(medium);
        }
        catch (Exception e) when (e is SlotPoolMismatchException or ArgumentException)
        {
            return e.Message;
        }
        if (found.Identity.Fingerprint != expected.Fingerprint)
            return $"it holds KV for model fingerprint {found.Identity.Fingerprint}, not {expected.Fingerprint} (another model or other weights).";
        if (found.Identity.LayoutText != expected.LayoutText)
            return $"its layout is {found.Identity.LayoutText}, expected {expected.LayoutText}.";
        if (found.SlotBytes != expected.SlotBytes)
            return $"its slots are {found.SlotBytes} bytes, expected {expected.SlotBytes}.";
        try
        {
            CheckLength(Path.Combine(medium.Location, DataFileName), found, medium.Identify(DataFileName)?.Length ?? 0);
        }
        catch (SlotPoolMismatchException e)
        {
            return e.Message;
        }
        header = found;
        return null;
    }

    private static void CheckLength(string dataPath, FileHeaderFields header, long length)
    {
        if (header.SlotCount is < 1 or > int.MaxValue || header.SlotBytes < StoredFormats.SlotHeaderBytes(header.Identity.ChunkTokens))
            throw new SlotPoolMismatchException($"{dataPath}: the header describes {header.SlotCount} slots of {header.SlotBytes} bytes, which is not a valid pool.");
        long expected = FileHeaderBytes + header.SlotCount * header.SlotBytes;
        if (length != expected)
            throw new SlotPoolMismatchException(
                $"{dataPath} is {length} bytes; its header describes {expected} bytes ({header.SlotCount} slots of {header.SlotBytes} bytes). " +
                "The file was truncated or extended. Delete the directory or open with MismatchPolicy.Recreate.");
    }

    /// <summary>Creates the data file as a temporary and renames it into place, so no process ever opens a half-made one.</summary>
    private static FileHeaderFields Create(SlotPoolOptions options, IStorageMedium medium, SlotPoolIdentity identity)
    {
        long slotBytes = identity.SlotBytes;
        long slots = SlotsFor(options, slotBytes) ?? throw new ArgumentException("A new pool needs CapacityBytes or CapacitySlots.", nameof(options));
        long total = FileHeaderBytes + slots * slotBytes;
        var creating = $"{DataFileName}.{Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(6))}{TemporarySuffix}";
        DeletePoolFiles(medium);
        var header = new FileHeaderFields(FormatVersion, identity, slotBytes, slots, BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)), 1);
        try
        {
            // Sparse: disk blocks are taken as slots are first written, so the pool grows on demand up to its
            // capacity. Reads and writes are positional (no mapping), so a full disk fails a write, which the disk
            // tier turns into a warning, never a crash.
            using (var file = medium.CreateNew(creating))
            {
                file.SetLength(total);
                file.Write(FileHeader.Write(identity, slotBytes, (int)slots, header.PoolId, header.WriterEpoch), 0);
                file.Flush();
            }
            medium.Replace(creating, DataFileName);
            medium.Sync();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            medium.Delete(creating);
            throw new IOException($"Could not create the slot pool file {Path.Combine(medium.Location, DataFileName)} of {total} bytes ({slots} slots of {slotBytes} bytes): {e.Message} Free disk space or lower the capacity.", e);
        }
        return header;
    }

    /// <summary>The slot count the options ask for (null when they name no capacity).</summary>
    public static long? SlotsFor(SlotPoolOptions options, long slotBytes)
    {
        long? slots = options.CapacitySlots is int count ? count : options.CapacityBytes is long bytes ? Math.Max(1, (bytes - FileHeaderBytes) / slotBytes) : null;
        if (slots > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(options), slots, "At most int.MaxValue slots.");
        return slots;
    }
}
