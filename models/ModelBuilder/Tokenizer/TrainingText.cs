namespace OrtKvTier.ModelBuilder;

/// <summary>The small text the tokenizer's merges are learned from (written for this project).</summary>
internal static class TrainingText
{
    public const string Text = """
        Hello! Hello, world. This is a small text that teaches a tiny tokenizer which pairs of bytes
        appear together often. The model that reads these tokens has random weights, so what it says
        means nothing, but the words it sees are real: the cache, the prefix, the prompt, the chat.
        A chat application sends the same system prompt again and again. The conversation grows one
        turn at a time. Each request starts with tokens the model has already seen, and the key and
        value tensors computed for them are the same every time. A prefix cache keeps those tensors
        so that the next request, the next process, or the next machine start can skip the work.
        The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore. Numbers
        like 1, 2, 3, 10, 42, 100, 2048 and 4096 show up in prompts too; so do names, dates and code:
        for (int i = 0; i < n; i++) { sum += values[i]; } return sum; if (x == null) throw error;
        You are a helpful assistant. Answer the question in one short sentence. What is the capital
        of France? The capital of France is Paris. What time is it? It is time to write the tests.
        Once upon a time there was a little model that wanted to remember everything it had read.
        It kept its memories in a file of slots, each slot the same size, each with a checksum, and
        it never returned a memory it could not prove was its own. When the power went out it woke
        up, read its journal, and knew exactly what it still had. That is the whole story.
        """;
}
