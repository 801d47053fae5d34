using System.Text.Json.Nodes;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace OrtKvTier.Model;

/// <summary>
/// The model folder's tokenizer and chat template, through ONNX Runtime GenAI's <c>Tokenizer</c>.
/// Thread-safe for encode/decode; each <see cref="CreateStream"/> is for one sequence.
/// </summary>
public sealed class ModelTokenizer : IDisposable
{
    private readonly Config _config;
    private readonly Tokenizer _tokenizer;
    private readonly Lazy<NulToken> _nul;
    /// <summary>
    /// GenAI's tokenizer is not reentrant (its BPE pre-tokenizer keeps scratch state: concurrent encodes on one instance
    /// corrupt each other, seen as rare failed requests under load): every call into it, stream decodes included, takes this.
    /// </summary>
    private readonly Lock _gate = new();

    /// <summary>Loads the tokenizer of a GenAI model folder.</summary>
    public ModelTokenizer(string folder)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        OrtRuntime.EnsureLoaded();
        _config = new Config(folder);
        try
        {
            _tokenizer = new Tokenizer(_config);
            _nul = new Lazy<NulToken>(() => NulToken.Of(folder, this));
        }
        catch
        {
            _config.Dispose();
            throw;
        }
    }

    /// <summary>Token ids of <paramref name="text"/> (no special tokens added).</summary>
    /// <remarks>
    /// GenAI reads text as a C string, which ends at the first NUL: text with NUL characters is encoded piece by piece
    /// around them and each NUL becomes the tokenizer's own NUL token, so no character is ever dropped. A tokenizer with
    /// no NUL token refuses such text (<see cref="ArgumentException"/>).
    /// </remarks>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (!text.Contains('\0')) return EncodeCString(text);
        var nul = _nul.Value;
        if (nul.Id is not { } nulId)
            throw new ArgumentException($"The text holds a NUL character (U+0000) and this model's tokenizer has no token for it ({nul.Why}). Remove NUL characters from the text.", nameof(text));
        var ids = new List<int>(text.Length);
        var pieces = text.Split('\0');
        for (int i = 0; i < pieces.Length; i++)
        {
            if (i > 0) ids.Add(nulId);
            if (pieces[i].Length == 0) continue;
            var piece = EncodeCString(pieces[i]);
            // Special tokens the tokenizer adds to every encoding (a BOS) start the text once, not every piece.
            int skip = ids.Count > 0 && piece.AsSpan().StartsWith(nul.AddedPrefix) ? nul.AddedPrefix.Length : 0;
            ids.AddRange(piece.AsSpan(skip));
        }
        return ids.ToArray();
    }

    private int[] EncodeCString(string text)
    {
        lock (_gate)
        {
            using var sequences = _tokenizer.Encode(text);
            return sequences[0].ToArray();
        }
    }

    private string DecodeLocked(ReadOnlySpan<int> tokens)
    {
        lock (_gate) return _tokenizer.Decode(tokens);
    }

    private string TemplateLocked(string messagesJson, bool addGenerationPrompt)
    {
        lock (_gate) return _tokenizer.ApplyChatTemplate("", messagesJson, "", addGenerationPrompt);
    }

    /// <summary>Text of <paramref name="tokens"/>.</summary>
    public string Decode(ReadOnlySpan<int> tokens)
    {
        // GenAI returns a C string: text around each NUL token is decoded on its own.
        if (_nul.Value.Id is not { } nul || !tokens.Contains(nul)) return DecodeLocked(tokens);
        var text = new System.Text.StringBuilder();
        for (int next; (next = tokens.IndexOf(nul)) >= 0; tokens = tokens[(next + 1)..])
            text.Append(next > 0 ? DecodeLocked(tokens[..next]) : "").Append('\0');
        return text.Append(tokens.Length > 0 ? DecodeLocked(tokens) : "").ToString();
    }

    /// <summary>
    /// Renders chat messages (a JSON array of <c>{"role","content"}</c>) with the folder's chat
    /// template, ending with the assistant prompt when <paramref name="addGenerationPrompt"/> is set.
    /// </summary>
    public string ApplyChatTemplate(string messagesJson, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messagesJson);
        // The rendered prompt comes back as a C string: NUL characters in the messages travel as a private-use character
        // the messages do not hold, and are put back in the rendered text.
        if (!messagesJson.Contains("\\u0000", StringComparison.Ordinal)) return TemplateLocked(messagesJson, addGenerationPrompt);
        var messages = JsonNode.Parse(messagesJson) ?? throw new ArgumentException("The messages JSON is null; expected an array of {role, content}.", nameof(messagesJson));
        var texts = new List<string>();
        EditStrings(messages, text => { texts.Add(text); return text; });
        char stand = Enumerable.Range(0xE000, 0x1900).Select(c => (char)c).FirstOrDefault(c => !texts.Any(t => t.Contains(c)));
        if (stand == default) throw new ArgumentException("The messages hold NUL characters and every private-use character; remove the NUL characters.", nameof(messagesJson));
        EditStrings(messages, text => text.Replace('\0', stand));
        return TemplateLocked(messages.ToJsonString(), addGenerationPrompt).Replace(stand, '\0');
    }

    private static void EditStrings(JsonNode node, Func<string, string> edit)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (name, child) in o.ToList())
                    if (child is JsonValue v && v.TryGetValue<string>(out var text)) o[name] = edit(text);
                    else if (child is not null) EditStrings(child, edit);
                break;
            case JsonArray a:
                for (int i = 0; i < a.Count; i++)
                    if (a[i] is JsonValue v && v.TryGetValue<string>(out var text)) a[i] = edit(text);
                    else if (a[i] is { } child) EditStrings(child, edit);
                break;
        }
    }

    /// <summary>An incremental decoder for one sequence: feed each new token, get the text it completes.</summary>
    internal TokenTextStream CreateStream()
    {
        var nul = _nul.Value.Id;
        lock (_gate) return new(_tokenizer.CreateStream(), nul, _gate);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _tokenizer.Dispose();
        _config.Dispose();
    }
}

/// <summary>Turns tokens into text one at a time (multi-byte characters come out when complete).</summary>
internal sealed class TokenTextStream : IDisposable
{
    private readonly TokenizerStream _stream;
    private readonly int? _nul;
    private readonly Lock _gate;

    internal TokenTextStream(TokenizerStream stream, int? nul, Lock gate)
    {
        _stream = stream;
        _nul = nul;
        _gate = gate;
    }

    /// <summary>The text <paramref name="token"/> completes (may be empty).</summary>
    public string Decode(int token)
    {
        if (token == _nul) return "\0";
        lock (_gate) return _stream.Decode(token);
    }

    /// <inheritdoc />
    public void Dispose() => _stream.Dispose();
}
