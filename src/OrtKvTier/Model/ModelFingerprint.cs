using System.IO.Hashing;
using System.Text;

namespace OrtKvTier.Model;

/// <summary>
/// 128-bit identity of a model's weights, configuration and KV layout. Cached KV bytes are only
/// valid for the fingerprint they were computed under.
/// </summary>
public readonly record struct ModelFingerprint(UInt128 Value)
{
    /// <summary>Hashes the decoder file, any external-data files, the config and the layout.</summary>
    public static ModelFingerprint Compute(string decoderPath, string configPath, KvLayout layout)
    {
        var hash = new XxHash128();
        foreach (var path in new[] { decoderPath }.Concat(ExternalDataFiles(decoderPath)))
        {
            using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            hash.Append(stream);
        }
        hash.Append(File.ReadAllBytes(configPath));
        hash.Append(Encoding.UTF8.GetBytes(layout.ShapeKey));
        return new ModelFingerprint(hash.GetCurrentHashAsUInt128());
    }

    /// <summary>32 hex digits.</summary>
    public override string ToString() => Value.ToString("x32");

    private static IEnumerable<string> ExternalDataFiles(string decoderPath)
    {
        var folder = Path.GetDirectoryName(decoderPath)!;
        var stem = Path.GetFileName(decoderPath);
        return Directory.EnumerateFiles(folder, stem + "*.data").Order(StringComparer.Ordinal);
    }
}
