using System.Text.Json;

namespace OrtKvTier.Model;

/// <summary>
/// The token a model folder's tokenizer gives the NUL character (U+0000), read from its <c>tokenizer.json</c>: a byte
/// fallback token (<c>&lt;0x00&gt;</c>), a token that is NUL itself, or byte-level BPE's stand-in for byte 0
/// (<c>Ā</c>). <see cref="AddedPrefix"/>: the special tokens the tokenizer puts before any text (a BOS).
/// </summary>
internal sealed record NulToken(int? Id, int[] AddedPrefix, string Why)
{
    public static NulToken Of(string folder, ModelTokenizer tokenizer)
    {
        var prefix = tokenizer.Encode("");
        var path = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(path)) return new NulToken(null, prefix, "the folder has no tokenizer.json to look it up in");
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllBytes(path));
            if (!json.RootElement.TryGetProperty("model", out var model) || !model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
                return new NulToken(null, prefix, "its vocabulary is not a token → id map");
            // Byte-level BPE names itself in the pre-tokenizer or decoder (not the vocabulary: no need to copy that).
            bool byteLevel = new[] { "pre_tokenizer", "decoder" }.Any(part =>
                json.RootElement.TryGetProperty(part, out var element) && element.GetRawText().Contains("\"ByteLevel\"", StringComparison.Ordinal));
            foreach (var name in byteLevel ? ["\u0100", "<0x00>", "\0"] : new[] { "<0x00>", "\0" })
                if (vocab.TryGetProperty(name, out var id) && id.TryGetInt32(out var value)) return new NulToken(value, prefix, "");
            return new NulToken(null, prefix, "its vocabulary holds no byte-0 token");
        }
        catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException)
        {
            return new NulToken(null, prefix, $"tokenizer.json could not be read: {e.Message}");
        }
    }
}
