namespace OrtKvTier.Storage;

/// <summary>
/// One file of a pool as the pool sees it: positional reads and writes, a durable flush, its length and a resize.
/// The pool, its journal and its snapshot reach their medium only through this (in the manner of FASTER's
/// <c>IDevice</c>); <see cref="FileMedium"/>, <see cref="MemoryMedium"/> and <see cref="FaultMedium"/> make them.
/// Thread-safe: positional operations from any number of threads at once.
/// </summary>
internal interface IStorageDevice : IDisposable
{
    /// <summary>The file's name in its medium, for messages.</summary>
    string Name { get; }

    /// <summary>What identifies the file underneath (its inode): a name that now points at another file has another id.</summary>
    ulong FileId { get; }

    /// <summary>Bytes in the file now.</summary>
    long Length { get; }

    /// <summary>Reads at most <paramref name="destination"/>.Length bytes at <paramref name="offset"/>; returns how many (fewer only at the end).</summary>
    int Read(Span<byte> destination, long offset);

    /// <summary>Writes all of <paramref name="source"/> at <paramref name="offset"/>, extending the file as needed.</summary>
    void Write(ReadOnlySpan<byte> source, long offset);

    /// <summary>Makes everything written so far durable (fsync).</summary>
    void Flush();

    /// <summary>Cuts or extends (sparse, zeros) the file to <paramref name="length"/> bytes.</summary>
    void SetLength(long length);
}

/// <summary>Reads that fill their buffer.</summary>
internal static class StorageDeviceExtensions
{
    /// <summary>Reads <paramref name="into"/>.Length bytes at <paramref name="offset"/>; past the end of the file the rest is zeros (which no checksum matches). Returns the bytes that came from the file.</summary>
    public static int ReadFully(this IStorageDevice device, Span<byte> into, long offset)
    {
        int done = 0;
        while (done < into.Length)
        {
            int read = device.Read(into[done..], offset + done);
            if (read == 0)
            {
                into[done..].Clear();
                break;
            }
            done += read;
        }
        return done;
    }

    /// <summary>The whole file (or what of it can be read now).</summary>
    public static byte[] ReadAll(this IStorageDevice device, long from = 0)
    {
        var bytes = new byte[Math.Max(0, device.Length - from)];
        int read = device.ReadFully(bytes, from);
        return read == bytes.Length ? bytes : bytes[..read];
    }
}
