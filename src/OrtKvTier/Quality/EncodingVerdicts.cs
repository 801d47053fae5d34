using System.Globalization;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;

namespace OrtKvTier.Quality;

/// <summary>What the quality gate decided for one model, encoding and chunk length, and on which figures.</summary>
internal sealed record EncodingVerdict(bool Passed, EncodingQuality? Quality, string Summary);

/// <summary>
/// Runs the quality gate (<see cref="KvQualityGate"/>) for an encoded identity, once: the figures are stored beside the pool
/// (<c>POOL_DIRECTORY.quality</c>, authenticated with the cache's key, tied to the calibration text) and read back by later
/// processes; thresholds are applied to the stored figures each time, so changing them needs no new measurement.
/// </summary>
internal static class EncodingVerdicts
{
    private const int ScoredTokens = 64;
    private const int PrefixTokensWanted = 128;

    /// <summary>The verdict for <paramref name="identity"/> (an approximate encoding) on <paramref name="model"/>; stored under <paramref name="verdictPath"/> when given.</summary>
    public static EncodingVerdict Decide(KvModel? model, SlotPoolIdentity identity, KvQualityGate gate, string? verdictPath, CacheSecret secret, ILogger? logger)
    {
        string text = gate.CalibrationText ?? CalibrationText.Default;
        string textHash = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16];
        if (verdictPath is not null && Read(verdictPath, identity, textHash, secret) is { } stored) return Judge(gate, stored, "stored");
        if (model is null)
            return new EncodingVerdict(false, null, "the cache was opened without the model (PrefixCache(fingerprint, layout, options)), so it cannot measure the encoding; open it with PrefixCache.Open(model, options)");
        EncodingQuality quality;
        try
        {
            quality = Measure(model, identity, gate, text);
        }
        catch (ArgumentException e)
        {
            return new EncodingVerdict(false, null, $"it could not be measured ({e.Message})");
        }
        if (verdictPath is not null) TryWrite(verdictPath, identity, textHash, quality, secret, logger);
        return Judge(gate, quality, "measured");
    }

    private static EncodingVerdict Judge(KvQualityGate gate, EncodingQuality q, string how) => new(gate.Passes(q), q, string.Create(CultureInfo.InvariantCulture,
        $"{how} on {q.Positions} positions: top-1 agreement {q.Top1Agreement * 100:F2}% (at least {gate.MinTop1Agreement * 100:F2}% wanted), mean KL {q.MeanKl:G3} nats (at most {gate.MaxMeanKl:G3})"));

    private static EncodingQuality Measure(KvModel model, SlotPoolIdentity identity, KvQualityGate gate, string text)
    {
        using var tokenizer = new ModelTokenizer(model.Folder);
        var tokens = tokenizer.Encode(text);
        int chunk = identity.ChunkTokens;
        int prefix = chunk * Math.Max(1, PrefixTokensWanted / chunk);
        int room = Math.Min(model.Layout.MaxLength, tokens.Length) - prefix - 1;
        if (room < 1) throw new ArgumentException($"a window needs more than {prefix + 1} tokens; the calibration text has {tokens.Length} and the model's context is {model.Layout.MaxLength}");
        int scored = Math.Min(ScoredTokens, room);
        int windows = Math.Max(1, Math.Min(tokens.Length / (prefix + scored + 1), (gate.Positions + scored - 1) / scored));
        return EncodingQualityProbe.Measure(model, [identity.Encoding], tokens.AsSpan(0, windows * (prefix + scored + 1)), chunk, prefix, scored)[0];
    }

    private static string Body(SlotPoolIdentity identity, string textHash, EncodingQuality q) => JsonSerializer.Serialize(new
    {
        fingerprint = identity.Fingerprint.ToString(), layout = identity.LayoutText, calibration_text = textHash,
        positions = q.Positions, top1_agreement = q.Top1Agreement, mean_kl = q.MeanKl, max_kl = q.MaxKl,
        exact_nats_per_token = q.ExactNatsPerToken, encoded_nats_per_token = q.EncodedNatsPerToken,
    });

    /// <summary>The directory the verdict is kept in (opened never through a link), and its name there; null when absent.</summary>
    private static (DirectoryHandle Directory, string Name)? Place(string path, bool create) =>
        DirectoryHandle.Open(Path.GetDirectoryName(Path.GetFullPath(path))!, linkFreeLevels: 1, create) is { } directory ? (directory, Path.GetFileName(path)) : null;

    private static EncodingQuality? Read(string path, SlotPoolIdentity identity, string textHash, CacheSecret secret)
    {
        try
        {
            if (Place(path, create: false) is not var (directory, name)) return null;
            using var _ = directory;
            using var handle = directory.OpenFile(name, PrivateFiles.Access.Read);
            using var stream = new FileStream(handle, FileAccess.Read);
            var lines = new StreamReader(stream).ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
            if (lines.Length != 2 || !string.Equals(lines[1].Trim(), Mac(lines[0], secret), StringComparison.Ordinal)) return null;
            var root = JsonDocument.Parse(lines[0]).RootElement;
            if (root.GetProperty("fingerprint").GetString() != identity.Fingerprint.ToString() || root.GetProperty("layout").GetString() != identity.LayoutText
                || root.GetProperty("calibration_text").GetString() != textHash) return null;
            var q = new EncodingQuality
            {
                Encoding = identity.Encoding, Positions = root.GetProperty("positions").GetInt32(), Top1Agreement = root.GetProperty("top1_agreement").GetDouble(),
                MeanKl = root.GetProperty("mean_kl").GetDouble(), MaxKl = root.GetProperty("max_kl").GetDouble(),
                ExactNatsPerToken = root.GetProperty("exact_nats_per_token").GetDouble(), EncodedNatsPerToken = root.GetProperty("encoded_nats_per_token").GetDouble(),
            };
            return Body(identity, textHash, q) == lines[0] ? q : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            return null; // absent, unreadable or not ours: measured again
        }
    }

    private static void TryWrite(string path, SlotPoolIdentity identity, string textHash, EncodingQuality quality, CacheSecret secret, ILogger? logger)
    {
        string body = Body(identity, textHash, quality);
        DirectoryHandle? directory = null;
        string temporary = $"{Path.GetFileName(path)}.{Guid.NewGuid():N}{StoredFormats.TemporarySuffix}";
        try
        {
            if (Place(path, create: true) is not var (opened, name)) return;
            directory = opened;
            using (var handle = directory.CreateFresh(temporary))
            using (var stream = new FileStream(handle, FileAccess.Write))
                stream.Write(Encoding.UTF8.GetBytes(body + "\n" + Mac(body, secret) + "\n"));
            directory.Replace(temporary, name);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            directory?.Delete(temporary);
            logger?.LogDebug(e, "Prefix cache: the quality verdict could not be stored at {Path}; it is measured again next time.", path);
        }
        finally
        {
            directory?.Dispose();
        }
    }

    private static string Mac(string body, CacheSecret secret) => secret.Mac(Encoding.UTF8.GetBytes("ortkv-quality-verdict\n" + body)).ToString("x32", CultureInfo.InvariantCulture);
}
