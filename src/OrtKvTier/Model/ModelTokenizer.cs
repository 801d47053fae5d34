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

    /// <summary>Loads the tokenizer of a GenAI model folder.</summary>
    public ModelTokenizer(string folder)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        OrtRuntime.EnsureLoaded();
        _config = new Config(folder);
        try
        {
            _tokenizer = new Tokenizer(_config);
        }
        catch
        {
            _config.Dispose();
            throw;
        }
    }

    /// <summary>Token ids of <paramref name="text"/> (no special tokens added).</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        using var sequences = _tokenizer.Encode(text);
        return sequences[0].ToArray();
    }

    /// <summary>Text of <paramref name="tokens"/>.</summary>
    public string Decode(ReadOnlySpan<int> tokens) => _tokenizer.Decode(tokens);

    /// <summary>
    /// Renders chat messages (a JSON array of <c>{"role","content"}</c>) with the folder's chat
    /// template, ending with the assistant prompt when <paramref name="addGenerationPrompt"/> is set.
    /// </summary>
    public string ApplyChatTemplate(string messagesJson, bool addGenerationPrompt = true)
    {
        ArgumentNullException.ThrowIfNull(messagesJson);
        return _tokenizer.ApplyChatTemplate("", messagesJson, "", addGenerationPrompt);
    }

    /// <summary>An incremental decoder for one sequence: feed each new token, get the text it completes.</summary>
    internal TokenTextStream CreateStream() => new(_tokenizer.CreateStream());

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

    internal TokenTextStream(TokenizerStream stream) => _stream = stream;

    /// <summary>The text <paramref name="token"/> completes (may be empty).</summary>
    public string Decode(int token) => _stream.Decode(token);

    /// <inheritdoc />
    public void Dispose() => _stream.Dispose();
}
