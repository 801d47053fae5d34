namespace OrtKvTier.ModelBuilder;

/// <summary>The special tokens every built model carries, at the end of the vocabulary, in this order.</summary>
public static class SpecialTokens
{
    /// <summary>Beginning and end of text.</summary>
    public const string EndOfText = "<|endoftext|>";
    /// <summary>Start of a system turn.</summary>
    public const string System = "<|system|>";
    /// <summary>Start of a user turn.</summary>
    public const string User = "<|user|>";
    /// <summary>Start of an assistant turn.</summary>
    public const string Assistant = "<|assistant|>";
    /// <summary>End of a turn; an end-of-sequence token like <see cref="EndOfText"/>.</summary>
    public const string End = "<|end|>";

    /// <summary>All specials in id order.</summary>
    public static readonly string[] All = [EndOfText, System, User, Assistant, End];

    /// <summary>The chat template written to tokenizer_config.json (Phi-3 style turns).</summary>
    public const string ChatTemplate =
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}{% endfor %}" +
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}";
}
