using System.IO.Hashing;
using System.Text;

namespace OrtKvTier.Model;

/// <summary>
/// 128-bit identity of a model: the decoder file, every external-data file its graph references, the config
/// and the KV shape. Cached KV bytes are only valid for the fingerprint they were computed under.
/// </summary>
public readonly record struct ModelFingerprint(UInt128 Value)
{
    private const string Domain = "ortkvtier/model-fingerprint/v2";
    /// <summary>Files are hashed in blocks of this size, on every core, then the block hashes are hashed.</summary>
    private const int BlockBytes = 4 << 20;

    /// <summary>
    /// Hashes <paramref name="decoderPath"/>, the <paramref name="externalDataFiles"/> (paths as the graph names
    /// them, relative to the decoder's folder, each with its name and length), <paramref name="configPath"/> and
    /// the layout's shape.
    /// </summary>
    public static ModelFingerprint Compute(string decoderPath, IReadOnlyList<string> externalDataFiles, string configPath, KvLayout layout)
    {
        ArgumentNullException.ThrowIfNull(externalDataFiles);
        ArgumentNullException.ThrowIfNull(layout);
        var folder = Path.GetDirectoryName(Path.GetFullPath(decoderPath))!;
        var hash = new XxHash128();
        hash.Append(Encoding.UTF8.GetBytes(Domain));
        AppendFile(hash, Path.GetFileName(decoderPath), decoderPath);
        foreach (var name in externalDataFiles) AppendFile(hash, name, Path.Combine(folder, name));
        hash.Append(File.ReadAllBytes(configPath));
        hash.Append(Encoding.UTF8.GetBytes(layout.ShapeKey));
        return new ModelFingerprint(hash.GetCurrentHashAsUInt128());
    }

    /// <summary>32 hex digits.</summary>
    public override string ToString() => Value.ToString("x32");

    private static void AppendFile(XxHash128 hash, string name, string path)
    {
        var (length, contents) = HashFile(path);
        Span<byte> fields = stackalloc byte[24];
        BitConverter.TryWriteBytes(fields, length);
        BitConverter.TryWriteBytes(fields[8..], contents);
        hash.Append(Encoding.UTF8.GetBytes(name));
        hash.Append(fields);
    }

    /// <summary>A file's length and the hash of its blocks' hashes (one-shot hashes of large blocks run at memory speed; a streaming hash does not).</summary>
    private static (long Length, UInt128 Hash) HashFile(string path)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.SequentialScan);
        long length = RandomAccess.GetLength(file);
        int blocks = checked((int)((length + BlockBytes - 1) / BlockBytes));
        var hashes = new byte[blocks * 16];
        Parallel.For(0, blocks, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, () => new byte[BlockBytes], (block, _, buffer) =>
        {
            long offset = (long)block * BlockBytes;
            int size = (int)Math.Min(BlockBytes, length - offset), done = 0;
            while (done < size)
            {
                int read = RandomAccess.Read(file, buffer.AsSpan(done, size - done), offset + done);
                if (read == 0) throw new IOException($"{path} ended at byte {offset + done} while being hashed; it is {length} bytes.");
                done += read;
            }
            XxHash128.Hash(buffer.AsSpan(0, size), hashes.AsSpan(block * 16, 16));
            return buffer;
        }, _ => { });
        return (length, XxHash128.HashToUInt128(hashes));
    }
}
