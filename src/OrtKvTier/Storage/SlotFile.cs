using System.Buffers.Binary;
using System.Diagnostics;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Storage.StoredFormats;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>
/// A pool's data file and lock: opens or creates <see cref="StoredFormats.DataFileName"/> (header page, then
/// fixed-size slots), checks its header against the identity asked for, and holds the directory's writer lock
/// for a writer (released by the kernel if the process dies). Positional reads and writes only. Owns both
/// files: <see cref="Dispose"/> closes them.
/// </summary>
internal sealed class SlotFile : IDisposable
{
    private readonly FileStream _data;
    private readonly Action<string, long>? _beforeWrite;

    private SlotFile(string directory, PoolLock? writerLock, FileStream data, FileHeaderFields header, SlotPoolOptions options)
    {
        Directory = directory;
        Lock = writerLock;
        _data = data;
        Header = header;
        _beforeWrite = options.BeforeWrite;
        Secret = options.Secret ?? throw new InvalidOperationException("The pool's secret is resolved before its files are opened.");
        _encrypt = options.Encrypt;
    }

    private readonly bool _encrypt;

    /// <summary>The key that authenticates (and may encrypt) this pool's entries.</summary>
    public CacheSecret Secret { get; }

    /// <summary>The pool directory (full path).</summary>
    public string Directory { get; }
    public string DataPath => Path.Combine(Directory, DataFileName);
    public FileHeaderFields Header { get; }
    /// <summary>The slot count before this open resized the pool to the capacity asked for; null when it did not.</summary>
    public long? ResizedFrom { get; private init; }

    /// <summary>Whether this open created the data file (so no slot holds an entry yet).</summary>
    public bool Created { get; private init; }

    /// <summary>Whether this process holds the writer lock.</summary>
    public bool IsWriter => Lock is not null;

    /// <summary>The writer lock, held while this process changes the pool (null for a read-only handle).</summary>
    public PoolLock? Lock { get; }
    /// <summary>The data file, for positional reads; valid until <see cref="Dispose"/>.</summary>
    public SafeFileHandle Data => _data.SafeFileHandle;

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
        ReadHeader(expected.Slot, header);
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
        var tag = PayloadSeal.SealAndWrite(payload, seal, Data, PayloadOffset(entry.Slot), parallelism,
            _beforeWrite is { } hook ? position => hook(DataFileName, position) : null);
        var header = new byte[SlotHeaderBytes];
        int used = SlotHeader.Write(header, Header.Identity, Secret, entry.Slot, entry.Generation, entry.Key, tokens, new SealedPayload(payload.Length, tag, nonce, seal));
        Write(header.AsSpan(0, AlignUp(used, 512)), SlotOffset(entry.Slot));
    }

    /// <summary>Checks an indexed slot's header and the checksum of its whole payload; null when intact, else why not.</summary>
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
        ReadHeader(entry.Slot, header);
        return SlotHeader.Check(header, Header.Identity, Secret, entry.Slot, entry.Generation, entry.Key, false, default, PayloadCapacity, out _, out var fields) is null
            ? ChunkRecord.Tokens(header, StoredFormats.SlotHeader, fields, Secret)
            : null;
    }

    private void ReadHeader(int slot, Span<byte> header) => PayloadSource.File(Data, SlotOffset(slot)).Read(0, header);

    /// <summary>Every slot whose header is valid, oldest write first: what recovery rebuilds the index from.</summary>
    public List<SlotEntry> ScanSlots()
    {
        var found = new List<SlotEntry>();
        for (int slot = 0; slot < Header.SlotCount; slot++)
            if (CheckSlot(new SlotEntry(default, slot, 0, 0, 0), out var entry, out _, anyKey: true) is null)
                found.Add(entry);
        return [.. found.OrderBy(e => e.Generation)];
    }

    /// <summary>Writes <paramref name="bytes"/> at <paramref name="offset"/> of the data file.</summary>
    public void Write(ReadOnlySpan<byte> bytes, long offset)
    {
        _beforeWrite?.Invoke(DataFileName, offset);
        RandomAccess.Write(Data, bytes, offset);
    }

    /// <summary>Overwrites a slot header's magic: the slot holds no entry any more, whatever the index says later.</summary>
    public void Invalidate(int slot) => Write(stackalloc byte[8], SlotOffset(slot));

    /// <summary>Zeroes every slot and returns their disk blocks (the file is cut to its header and extended again, sparse).</summary>
    public void ZeroSlots()
    {
        long length = RandomAccess.GetLength(Data);
        _beforeWrite?.Invoke(DataFileName, FileHeaderBytes);
        RandomAccess.SetLength(Data, FileHeaderBytes);
        RandomAccess.SetLength(Data, length);
    }

    /// <summary>fsync of the data file.</summary>
    public void FlushToDisk() => _data.Flush(flushToDisk: true);

    public void Dispose()
    {
        _data.Dispose();
    }

    /// <summary>
    /// Takes the directory's writer lock and opens the data file for <see cref="SlotPoolOptions.Identity"/>, creating
    /// it (sparse: it grows on demand as slots are written) when missing or, per
    /// <see cref="SlotPoolOptions.OnMismatch"/>, when it belongs to another identity or format.
    /// </summary>
    public static SlotFile OpenWriter(SlotPoolOptions options, string directory, out PoolLock.Hold openHold)
    {
        PoolFiles.CreateDirectory(directory, options.ShareWithGroup);
        var writerLock = new PoolLock(directory, options.WriterLockTimeout);
        openHold = writerLock.Acquire(() => { });
        var hold = openHold;
        FileStream? data = null;
        try
        {
            var dataPath = Path.Combine(directory, DataFileName);
            var identity = options.Identity!;
            if (File.Exists(dataPath))
            {
                var mismatch = DescribeMismatch(dataPath, identity, out var existing);
                if (mismatch is not null && options.OnMismatch == MismatchPolicy.Refuse)
                    throw new SlotPoolMismatchException($"{dataPath}: {mismatch} Open with MismatchPolicy.Recreate to replace it, or use another directory.");
                if (mismatch is not null)
                {
                    options.Logger?.LogWarning("Slot pool {Directory}: recreating because {Mismatch}", directory, mismatch);
                    DeletePoolFiles(directory);
                }
                else
                {
                    data = OpenData(dataPath, FileAccess.ReadWrite);
                    long slots = SlotsFor(options, existing!.SlotBytes) ?? existing.SlotCount;
                    var header = existing with { WriterEpoch = existing.WriterEpoch + 1, SlotCount = slots };
                    options.BeforeWrite?.Invoke(DataFileName, 0);
                    // Grown: the added slots are sparse (shrinking was done by SlotPool.Open, copying the recent entries).
                    if (slots != existing.SlotCount) RandomAccess.SetLength(data.SafeFileHandle, FileHeaderBytes + slots * header.SlotBytes);
                    // No fsync: the epoch only makes generations distinct; integrity rests on key and checksums.
                    RandomAccess.Write(data.SafeFileHandle, FileHeader.Write(identity, header.SlotBytes, (int)header.SlotCount, header.PoolId, header.WriterEpoch), 0);
                    return new SlotFile(directory, writerLock, data, header, options) { ResizedFrom = slots != existing.SlotCount ? existing.SlotCount : null };
                }
            }
            var created = Create(options, directory, identity);
            data = OpenData(dataPath, FileAccess.ReadWrite);
            return new SlotFile(directory, writerLock, data, created, options) { Created = true };
        }
        catch
        {
            data?.Dispose();
            hold.Dispose();
            throw;
        }
    }

    /// <summary>Opens the data file for reading (no lock), checking it against <see cref="SlotPoolOptions.Identity"/> when given.</summary>
    public static SlotFile OpenReader(SlotPoolOptions options, string directory)
    {
        var dataPath = Path.Combine(directory, DataFileName);
        if (!File.Exists(dataPath))
            throw new FileNotFoundException($"No slot pool in {directory}: {DataFileName} is missing. A writer creates it.", dataPath);
        FileHeaderFields header;
        if (options.Identity is { } identity)
        {
            var mismatch = DescribeMismatch(dataPath, identity, out var existing);
            if (mismatch is not null) throw new SlotPoolMismatchException($"{dataPath}: {mismatch} A read-only handle cannot recreate it.");
            header = existing!;
        }
        else
        {
            header = ReadHeaderOf(dataPath);
            CheckLength(dataPath, header, new FileInfo(dataPath).Length);
        }
        return new SlotFile(directory, null, OpenData(dataPath, FileAccess.Read), header, options);
    }

    /// <summary>The header of the data file at <paramref name="dataPath"/>; throws <see cref="SlotPoolMismatchException"/> saying what is wrong.</summary>
    public static FileHeaderFields ReadHeaderOf(string dataPath)
    {
        if (!File.Exists(dataPath)) throw new FileNotFoundException($"No slot pool file {dataPath}.", dataPath);
        PoolFiles.RefuseLink(dataPath);
        using var handle = File.OpenHandle(dataPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        var page = new byte[FileHeaderBytes];
        int read = RandomAccess.Read(handle, page, 0);
        var header = FileHeader.Read(page.AsSpan(0, read), dataPath);
        return header;
    }

    /// <summary>Removes every file of a pool in <paramref name="directory"/> (best effort).</summary>
    public static void DeletePoolFiles(string directory)
    {
        foreach (var name in new[] { DataFileName, JournalFileName, SnapshotFileName, DataFileName + ".creating", JournalFileName + ".tmp", SnapshotFileName + ".tmp" })
            TryDelete(Path.Combine(directory, name));
    }

    public static void TryDelete(string path)
    {
        try { File.Delete(path); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    /// <summary>Null when the file matches; else a sentence naming the expected and found values.</summary>
    private static string? DescribeMismatch(string dataPath, SlotPoolIdentity expected, out FileHeaderFields? header)
    {
        header = null;
        FileHeaderFields found;
        try
        {
            found = ReadHeaderOf(dataPath);
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
            CheckLength(dataPath, found, new FileInfo(dataPath).Length);
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

    private static FileHeaderFields Create(SlotPoolOptions options, string directory, SlotPoolIdentity identity)
    {
        long slotBytes = identity.SlotBytes;
        long slots = SlotsFor(options, slotBytes) ?? throw new ArgumentException("A new pool needs CapacityBytes or CapacitySlots.", nameof(options));
        long total = FileHeaderBytes + slots * slotBytes;
        var dataPath = Path.Combine(directory, DataFileName);
        var creating = dataPath + ".creating";
        DeletePoolFiles(directory);
        var header = new FileHeaderFields(FormatVersion, identity, slotBytes, slots, BinaryPrimitives.ReadUInt64LittleEndian(RandomNumberGenerator.GetBytes(8)), 1);
        try
        {
            // Sparse: disk blocks are taken as slots are first written, so the pool grows on demand up to its
            // capacity. Reads and writes are positional (no mapping), so a full disk fails a write, which the disk
            // tier turns into a warning, never a crash.
            using (var file = PoolFiles.CreateFresh(creating))
            {
                options.BeforeWrite?.Invoke(DataFileName, 0);
                file.SetLength(total);
                RandomAccess.Write(file.SafeFileHandle, FileHeader.Write(identity, slotBytes, (int)slots, header.PoolId, header.WriterEpoch), 0);
                file.Flush(flushToDisk: true);
            }
            File.Move(creating, dataPath);
            DirectorySync.Flush(directory);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(creating);
            throw new IOException($"Could not create the slot pool file {dataPath} of {total} bytes ({slots} slots of {slotBytes} bytes): {e.Message} Free disk space or lower the capacity.", e);
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

    private static FileStream OpenData(string path, FileAccess access)
    {
        PoolFiles.RefuseLink(path);
        return new(path, FileMode.Open, access, FileShare.ReadWrite | FileShare.Delete, 1, FileOptions.None);
    }

    /// <summary>Takes the directory's OS writer lock, waiting at most <paramref name="timeout"/>; throws <see cref="SlotPoolLockedException"/> then.</summary>
    public static FileStream AcquireWriterLock(string directory, TimeSpan timeout)
    {
        var path = Path.Combine(directory, LockFileName);
        PoolFiles.RefuseLink(path);
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                // On Unix, FileShare.None takes flock(LOCK_EX); the kernel drops it when the process dies.
                return PoolFiles.OpenOrCreate(path, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
            {
                if (clock.Elapsed >= timeout)
                    throw new SlotPoolLockedException($"Another process held the slot pool's lock in {directory} ({path}) for longer than {timeout.TotalMilliseconds:F0} ms. " +
                        "Wait longer (SlotPoolOptions.WriterLockTimeout), open read-only, or use another directory.");
                Thread.Sleep(2);
            }
        }
    }
}
