using Microsoft.Extensions.AI;
using OrtKvTier.Cache;
using OrtKvTier.Chat;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;
using OrtKvTier.Generation;

namespace OrtKvTier.Tests.Chat;

public sealed class KvChatClientTests : IDisposable
{
    private const int Chunk = 16;
    private static readonly ChatOptions Greedy = new() { Temperature = 0, MaxOutputTokens = 12 };
    private readonly TempDir _temp = new();
    private readonly KvModel _model = KvModel.Load(TestPaths.Tiny);
    private readonly ModelTokenizer _tokenizer = new(TestPaths.Tiny);

    private PrefixCache NewCache() => CacheTestKit.Open(_model, directory: null, Chunk);

    [Theory]
    [InlineData("/")]
    [InlineData("//")]
    [InlineData("/./")]
    public void AModelFolderWithTrailingSeparatorsKeepsItsName(string tail)
    {
        using var model = KvModel.Load(TestPaths.Tiny + tail);
        using var client = model.AsChatClient(_tokenizer);
        Assert.Equal("tiny", client.GetService<ChatClientMetadata>()!.DefaultModelId);
    }

    /// <summary>A stream cancelled before its generation starts (a client that left at once on a busy server) ends; it never waits forever.</summary>
    [Fact]
    public async Task AStreamCancelledBeforeItsGenerationStartsEndsWithACancellation()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        using var cancelled = new CancellationTokenSource();
        await cancelled.CancelAsync();
        var reading = Task.Run(async () =>
        {
            await foreach (var _ in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "Hello there")], Greedy, cancelled.Token)) { }
        });
        Assert.Same(reading, await Task.WhenAny(reading, Task.Delay(TimeSpan.FromSeconds(30))));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => reading);
    }

    [Fact]
    public async Task MessagesMarkedAsDocumentsComeFromTheirOwnEntriesInAnyOrderAndUnmarkedOnesRunExactly()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        static ChatMessage Document(string text) => new(ChatRole.User, text) { AdditionalProperties = new() { [KvChatClient.DocumentProperty] = true } };
        string a = string.Join(' ', Enumerable.Repeat("The ferry to the islands leaves every morning at nine from the harbour.", 4));
        string b = string.Join(' ', Enumerable.Repeat("Marta keeps four hives of bees on the roof of her building.", 4));
        var system = new ChatMessage(ChatRole.System, "Answer from the documents.");
        var question = new ChatMessage(ChatRole.User, "When does the ferry leave?");

        IReadOnlyList<DocumentPlacement> Placed(ChatResponse r) => (IReadOnlyList<DocumentPlacement>)r.AdditionalProperties!["documents"]!;
        var first = await client.GetResponseAsync([system, Document(a), Document(b), question], Greedy);
        Assert.Equal(2, Placed(first).Count);
        Assert.All(Placed(first), p => Assert.Equal(0, p.CachedTokens));
        var swapped = await client.GetResponseAsync([system, Document(b), Document(a), question], Greedy);
        Assert.Equal(2, Placed(swapped).Count);
        Assert.All(Placed(swapped), p => Assert.True(p.CachedTokens >= Chunk, $"{p.CachedTokens} of {p.Tokens} document tokens came from the cache"));
        Assert.True(Placed(swapped)[0].Offset < Placed(swapped)[1].Offset);
        Assert.Equal(12, swapped.Usage!.OutputTokenCount);

        // Unmarked: nothing is placed, and the answer is the exact one (as with no cache at all).
        var plain = await client.GetResponseAsync([system, new ChatMessage(ChatRole.User, b), new ChatMessage(ChatRole.User, a), question], Greedy);
        Assert.Empty(Placed(plain));
        using var uncached = _model.AsChatClient(_tokenizer);
        Assert.Equal((await uncached.GetResponseAsync([system, new ChatMessage(ChatRole.User, b), new ChatMessage(ChatRole.User, a), question], Greedy)).Text, plain.Text);
    }

    [Fact]
    public async Task EachTurnRestoresAtLeastEveryFullChunkOfThePreviousTurnsPrompt()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        var history = new List<ChatMessage> { new(ChatRole.System, "You are a terse assistant who answers about foxes and dogs.") };
        int previousPrompt = 0;
        for (int turn = 0; turn < 4; turn++)
        {
            history.Add(new ChatMessage(ChatRole.User, $"Question {turn}: what does the quick brown fox do today?"));
            int promptTokens = client.PromptTokens(history).Length;
            var response = await client.GetResponseAsync(history, Greedy);
            Assert.Equal(promptTokens, response.Usage!.InputTokenCount);
            Assert.Equal(response.Usage.InputTokenCount + response.Usage.OutputTokenCount, response.Usage.TotalTokenCount);
            long cached = response.Usage.CachedInputTokenCount!.Value;
            if (turn > 0) Assert.True(cached >= previousPrompt / Chunk * Chunk, $"turn {turn}: {cached} cached; the previous prompt had {previousPrompt} tokens");
            Assert.Equal(cached, (int)response.AdditionalProperties!["cached_tokens"]!);
            history.AddRange(response.Messages);
            previousPrompt = promptTokens;
        }
    }

    [Fact]
    public async Task TwoConversationsSharingASystemPromptBothHitIt()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        var system = new ChatMessage(ChatRole.System, string.Join(' ', Enumerable.Repeat("Rules: answer briefly, cite the manual, never guess.", 3)));
        ChatMessage[] first = [system, new(ChatRole.User, "How do I reset the router?")];
        ChatMessage[] second = [system, new(ChatRole.User, "Where is the serial number?")];
        ChatMessage[] third = [system, new(ChatRole.User, "Which cable goes where?")];
        int shared = client.PromptTokens(first).Zip(client.PromptTokens(second)).TakeWhile(p => p.First == p.Second).Count();
        Assert.True(shared >= 2 * Chunk, $"the system prompt should span chunks; shared prefix is {shared} tokens");

        Assert.Equal(0, (await client.GetResponseAsync(first, Greedy)).Usage!.CachedInputTokenCount);
        Assert.True((await client.GetResponseAsync(second, Greedy)).Usage!.CachedInputTokenCount >= shared / Chunk * Chunk);
        Assert.True((await client.GetResponseAsync(third, Greedy)).Usage!.CachedInputTokenCount >= shared / Chunk * Chunk);
    }

    [Fact]
    public async Task ATenantSetPerRequestHitsOnlyItsOwnEntriesAndTheClientsDefaultTenantIsOneToo()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        ChatMessage[] conversation = [new(ChatRole.System, string.Join(' ', Enumerable.Repeat("Confidential: the merger closes on Friday.", 4))), new(ChatRole.User, "Summarize.")];
        ChatOptions As(string tenant) => new() { Temperature = 0, MaxOutputTokens = 4, AdditionalProperties = new() { [KvChatClient.TenantProperty] = tenant } };
        var alice = await client.GetResponseAsync(conversation, As("alice"));
        Assert.Equal(0, alice.Usage!.CachedInputTokenCount);
        var bob = await client.GetResponseAsync(conversation, As("bob"));
        Assert.Equal(0, bob.Usage!.CachedInputTokenCount); // bob cannot see (or time) alice's prompt
        Assert.Equal(alice.Text, bob.Text);
        Assert.True((await client.GetResponseAsync(conversation, As("alice"))).Usage!.CachedInputTokenCount >= 2 * Chunk);

        var aliceClient = _model.AsChatClient(_tokenizer, cache, new KvChatClientOptions { Tenant = "alice" });
        Assert.True((await aliceClient.GetResponseAsync(conversation, Greedy)).Usage!.CachedInputTokenCount >= 2 * Chunk);
        Assert.Equal(0, (await client.GetResponseAsync(conversation, Greedy)).Usage!.CachedInputTokenCount);
    }

    [Fact]
    public async Task StreamingTextEqualsNonStreamingTextForASeed()
    {
        ChatMessage[] messages = [new(ChatRole.User, "Tell me a story about a dog.")];
        var sampled = new ChatOptions { Temperature = 1.2f, TopP = 0.95f, TopK = 50, Seed = 1234, MaxOutputTokens = 40 };
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        var response = await client.GetResponseAsync(messages, sampled);
        var updates = new List<ChatResponseUpdate>();
        await foreach (var update in client.GetStreamingResponseAsync(messages, sampled)) updates.Add(update);
        Assert.Equal(response.Text, string.Concat(updates.Select(u => u.Text)));
        Assert.True(updates.Count > 2);
        var usage = updates.SelectMany(u => u.Contents).OfType<UsageContent>().Single().Details;
        Assert.Equal(response.Usage!.OutputTokenCount, usage.OutputTokenCount);
        Assert.True(usage.CachedInputTokenCount > 0); // the second request reuses the first's prompt
        Assert.NotEqual(response.Text, (await client.GetResponseAsync(messages, new ChatOptions { Temperature = 1.2f, Seed = 99, MaxOutputTokens = 40 })).Text);
    }

    [Fact]
    public async Task StopSequencesEndTheAnswerBeforeThem()
    {
        var client = _model.AsChatClient(_tokenizer);
        ChatMessage[] messages = [new(ChatRole.User, "Count for me.")];
        var full = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 40 });
        var stop = full.Text.Substring(full.Text.Length / 2, 3);
        var stopped = await client.GetResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 40, StopSequences = [stop] });
        Assert.Equal(full.Text[..full.Text.IndexOf(stop, StringComparison.Ordinal)], stopped.Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.Equal(ChatFinishReason.Length, full.FinishReason);
        var streamed = new List<string>();
        await foreach (var u in client.GetStreamingResponseAsync(messages, new ChatOptions { Temperature = 0, MaxOutputTokens = 40, StopSequences = [stop] })) streamed.Add(u.Text);
        Assert.Equal(stopped.Text, string.Concat(streamed));
    }

    [Fact]
    public async Task CancellationStopsWithinOneTokenAndTheNextRequestIsCorrect()
    {
        using var cache = NewCache();
        var client = _model.AsChatClient(_tokenizer, cache);
        ChatMessage[] messages = [new(ChatRole.User, string.Join(' ', Enumerable.Repeat("Write a very long essay about foxes.", 4)))];
        var longAnswer = new ChatOptions { Temperature = 0, MaxOutputTokens = 400 };
        using var cancel = new CancellationTokenSource();
        int afterCancel = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var update in client.GetStreamingResponseAsync(messages, longAnswer, cancel.Token))
            {
                if (cancel.IsCancellationRequested) afterCancel++;
                else cancel.Cancel();
            }
        });
        Assert.True(afterCancel <= 1, $"{afterCancel} pieces arrived after cancelling");

        var after = await client.GetResponseAsync(messages, Greedy);
        var reference = await _model.AsChatClient(_tokenizer).GetResponseAsync(messages, Greedy);
        Assert.Equal(reference.Text, after.Text);
        Assert.True(after.Usage!.CachedInputTokenCount > 0);
    }

    [Fact]
    public void ACancelledGenerationRunsAtMostOneMoreTokenAndLeavesTheCacheServingCorrectly()
    {
        using var cache = NewCache();
        var prompt = CacheTestKit.Prompt(60, seed: 50);
        using var cancel = new CancellationTokenSource();
        int piecesAfterCancel = 0;
        var generator = new OrtKvTier.Generation.TextGenerator(_model, _tokenizer, cache);
        Assert.ThrowsAny<OperationCanceledException>(() => generator.Generate(prompt, 300, null, piece =>
        {
            if (cancel.IsCancellationRequested) piecesAfterCancel++;
            else cancel.Cancel();
        }, null, cancel.Token));
        Assert.Equal(0, piecesAfterCancel);
        var greedy = OrtKvTier.Generation.SearchOptions.FromConfig(_model) with { DoSample = false };
        var after = generator.Generate(prompt, 10, greedy);
        Assert.Equal(new OrtKvTier.Generation.TextGenerator(_model, _tokenizer).Generate(prompt, 10, greedy).Tokens, after.Tokens);
        Assert.Equal(48, after.CachedTokens); // the cancelled run had captured its prompt after the first token
    }

    [Fact]
    public async Task EightConcurrentConversationsAnswerAsTheyDoAlone()
    {
        var conversations = Enumerable.Range(0, 8).Select(i => new[]
        {
            "Shared system prompt for the support desk: be brief and polite, always.",
            $"User {i} asks about order {i * 7}.", $"User {i} follows up about delivery {i}.",
        }).ToArray();

        async Task<string[]> Converse(IChatClient client, string[] script)
        {
            var history = new List<ChatMessage> { new(ChatRole.System, script[0]) };
            var answers = new List<string>();
            foreach (var line in script.Skip(1))
            {
                history.Add(new ChatMessage(ChatRole.User, line));
                var response = await client.GetResponseAsync(history, Greedy);
                answers.Add(response.Text);
                history.AddRange(response.Messages);
            }
            return answers.ToArray();
        }

        var alone = new List<string[]>();
        foreach (var c in conversations) alone.Add(await Converse(_model.AsChatClient(_tokenizer), c));
        using var cache = NewCache();
        var shared = _model.AsChatClient(_tokenizer, cache);
        var together = await Task.WhenAll(conversations.Select(c => Task.Run(() => Converse(shared, c))));
        for (int i = 0; i < conversations.Length; i++) Assert.Equal(alone[i], together[i]);
        Assert.True(cache.Host.GetStats().Hits > 0);
    }

    [Fact]
    public void MetadataAndServicesAreExposed()
    {
        using var cache = NewCache();
        IChatClient client = _model.AsChatClient(_tokenizer, cache, new KvChatClientOptions { ModelId = "tiny-test" });
        Assert.Equal("tiny-test", client.GetService<ChatClientMetadata>()!.DefaultModelId);
        Assert.Same(cache, client.GetService<PrefixCache>());
        Assert.Same(_model, client.GetService<KvModel>());
    }

    public void Dispose()
    {
        _tokenizer.Dispose();
        _model.Dispose();
        _temp.Dispose();
    }
}
