using System.Globalization;
using System.Text.RegularExpressions;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Console.Commands;

/// <summary>
/// <c>rag</c>: answers questions from a small collection of documents (paragraphs of a text file). Each question
/// retrieves the documents that share the most words with it, in that order, and marks them as documents of the prompt
/// (<see cref="TextGenerator"/>'s document spans): a document any earlier question (or run) retrieved comes from the
/// cache wherever it stood, moved into place, instead of being prefilled again.
/// </summary>
internal static partial class RagCommand
{
    public static int Run(CommandLine cl)
    {
        var modelDir = cl.String("model") ?? RepoPaths.DefaultModel;
        var documentsFile = cl.String("documents") ?? throw new UsageException("rag needs --documents FILE (paragraphs separated by blank lines).");
        var questions = cl.String("questions-file") is { } file ? File.ReadAllLines(file).Where(l => l.Trim().Length > 0).ToList()
            : cl.String("question") is { } one ? [one] : throw new UsageException("rag needs --question TEXT or --questions-file FILE.");
        int top = cl.Int("top", 3, min: 1);
        int maxNew = cl.Int("max-new-tokens", 48, min: 1);
        bool json = cl.Flag("json");
        var cacheOptions = CacheOptions.Read(cl);
        cl.RejectUnknown();
        var documents = Regex.Split(File.ReadAllText(documentsFile).Replace("\r\n", "\n"), @"\n\s*\n").Select(d => d.Trim()).Where(d => d.Length > 0).ToList();
        if (documents.Count == 0) throw new UsageException($"{documentsFile} holds no paragraphs; separate documents with blank lines.");

        using var model = KvModel.Load(modelDir);
        using var tokenizer = new ModelTokenizer(model.Folder);
        using var cache = cacheOptions.Open(model) ?? throw new UsageException("rag reuses documents through the cache; drop --no-cache.");
        if (model.DocumentReuseRefusal is { } why) System.Console.Error.WriteLine($"note: documents are prefilled every time: {why}.");
        var generator = new TextGenerator(model, tokenizer, cache, cacheOptions.Tenant);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var answers = new List<object>();
        foreach (var question in questions)
        {
            var retrieved = Retrieve(documents, question, top);
            // Plain text, no chat template (any model): an instruction, each document, the question. Each document is
            // tokenized on its own, so the same document is the same tokens (and cache entries) in every prompt.
            var prompt = new List<int>(tokenizer.Encode("Answer the question from the documents below.\n\n"));
            var spans = new List<Range>();
            foreach (int d in retrieved)
            {
                var tokens = tokenizer.Encode($"Document: {documents[d]}\n\n");
                spans.Add(new Range(prompt.Count, prompt.Count + tokens.Length));
                prompt.AddRange(tokens);
            }
            prompt.AddRange(tokenizer.Encode($"Question: {question}\nAnswer:"));
            if (prompt.Count + maxNew > model.Layout.MaxLength)
                throw new UsageException($"The prompt for '{question}' is {prompt.Count} tokens; with {maxNew} new ones it exceeds the model's {model.Layout.MaxLength}. Use fewer --top documents.");
            var result = generator.Generate([.. prompt], maxNew, search, onText: null, stopSequences: ["\n\n", "\nQuestion"], documents: spans);
            if (json)
                answers.Add(new
                {
                    question, documents = retrieved, answer = result.Text.Trim(), prompt_tokens = result.PromptTokens, cached_tokens = result.CachedTokens, ttft_ms = Math.Round(result.TtftMs, 1),
                    placed = result.Documents.Select(p => new { offset = p.Offset, tokens = p.Tokens, cached_tokens = p.CachedTokens, moved_tokens = p.MovedTokens, recomputed_tokens = p.RecomputedTokens, delta = p.Delta }),
                });
            else
            {
                System.Console.WriteLine($"Q: {question}\nA: {result.Text.Trim()}");
                var ttft = result.TtftMs.ToString("F0", CultureInfo.InvariantCulture);
                System.Console.Error.WriteLine($"   [documents {string.Join(", ", retrieved)}; TTFT {ttft} ms; prompt {result.PromptTokens} tokens, {result.CachedTokens} restored as a prefix; " +
                    string.Join("; ", result.Documents.Select(p => $"document at {p.Offset}: {p.CachedTokens} of {p.Tokens} tokens cached, {p.MovedTokens} moved by {p.Delta}, {p.RecomputedTokens} recomputed")) + "]");
            }
        }
        if (json) JsonOutput.Write(w =>
        {
            w.WritePropertyName("answers");
            w.WriteRawValue(System.Text.Json.JsonSerializer.Serialize(answers));
        });
        return 0;
    }

    /// <summary>The <paramref name="top"/> documents sharing the most words (of four letters or more) with the question, best first.</summary>
    private static int[] Retrieve(List<string> documents, string question, int top)
    {
        var words = Words(question);
        return [.. documents.Select((d, i) => (Index: i, Score: Words(d).Count(words.Contains))).Where(d => d.Score > 0)
            .OrderByDescending(d => d.Score).ThenBy(d => d.Index).Take(top).Select(d => d.Index)];
    }

    private static HashSet<string> Words(string text) => [.. WordPattern().Matches(text.ToLowerInvariant()).Select(m => m.Value)];

    [GeneratedRegex(@"\p{L}{4,}")]
    private static partial Regex WordPattern();
}
