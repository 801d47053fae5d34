using Microsoft.Extensions.AI;
using OrtKvTier.Cache;
using OrtKvTier.Chat;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Chat;

/// <summary>The chat client over a <see cref="GenerationBatch"/>: what many users at once see.</summary>
public sealed class BatchedChatTests : IDisposable
{
    private const int Chunk = 16;
    private readonly KvModel _model = KvModel.Load(TestPaths.Tiny);
    private readonly ModelTokenizer _tokenizer = new(TestPaths.Tiny);

    private static ChatOptions Greedy(int maxTokens = 12) => new() { Temperature = 0, MaxOutputTokens = maxTokens };

    private string SystemPrompt(int tokens)
    {
        var words = new List<string>();
        for (int i = 0; _tokenizer.Encode(string.Join(' ', words)).Length < tokens; i++) words.Add($"rule{i % 37} keeps answers short");
        return string.Join(' ', words);
    }

    [Fact]
    public async Task EightSimultaneousFirstTurnsComputeTheSharedSystemPromptOnceAndAnswerAsAlone()
    {
        var system = new ChatMessage(ChatRole.System, SystemPrompt(256));
        var conversations = Enumerable.Range(0, 8).Select(i => new List<ChatMessage> { system, new(ChatRole.User, $"Question {i}: what is {i} plus {i * 3}?") }).ToArray();
        var alone = new List<string>();
        using (var aloneCache = CacheTestKit.Open(_model, directory: null, Chunk))
        {
            var client = _model.AsChatClient(_tokenizer, aloneCache);
            foreach (var c in conversations) alone.Add((await client.GetResponseAsync(c, Greedy())).Text);
        }

        using var cache = CacheTestKit.Open(_model, directory: null, Chunk);
        using var batch = new GenerationBatch(_model, new GenerationBatchOptions { MaxRows = 8, MaxPrefillTokensPerStep = 64 });
        var batched = _model.AsChatClient(_tokenizer, cache, new KvChatClientOptions { Batch = batch });
        using var start = new ManualResetEventSlim();
        var answers = conversations.Select(c => Task.Run(async () =>
        {
            start.Wait();
            return await batched.GetResponseAsync(c, Greedy());
        })).ToArray();
        start.Set();
        var responses = await Task.WhenAll(answers);

        int systemTokens = batched.PromptTokens([system]).Length;
        var cached = responses.Select(r => r.Usage!.CachedInputTokenCount ?? 0).ToArray();
        // One computed the system prompt; the seven others restored it (all but the chunk it ends inside).
        Assert.Equal(1, cached.Count(c => c < systemTokens - 2 * Chunk));
        Assert.Equal(7, cached.Count(c => c >= systemTokens - 2 * Chunk));
        Assert.Equal(alone, responses.Select(r => r.Text));
        Assert.True(batch.LargestStep > 1, $"largest step {batch.LargestStep}");
        Assert.Equal(0, batch.ActiveRows);
        Assert.Equal(0, batch.ReservedTokens);
    }

    [Fact]
    public async Task AStreamItsReaderLeavesFreesItsRowAndTheOthersFinish()
    {
        using var batch = new GenerationBatch(_model, new GenerationBatchOptions { MaxRows = 4 });
        var client = _model.AsChatClient(_tokenizer, cache: null, new KvChatClientOptions { Batch = batch });
        var others = Enumerable.Range(0, 3).Select(i => client.GetResponseAsync([new ChatMessage(ChatRole.User, $"Tell me about {i}")], Greedy(40))).ToArray();
        using var leave = new CancellationTokenSource();
        int pieces = 0;
        var leaving = Task.Run(async () =>
        {
            await foreach (var update in client.GetStreamingResponseAsync([new ChatMessage(ChatRole.User, "A long story please")], Greedy(3000), leave.Token))
                if (++pieces == 3) await leave.CancelAsync();
        });
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => leaving);
        var done = await Task.WhenAll(others);
        Assert.All(done, r => Assert.Equal(40, r.Usage!.OutputTokenCount));
        for (var clock = System.Diagnostics.Stopwatch.StartNew(); batch.ActiveRows > 0 && clock.Elapsed < TimeSpan.FromSeconds(30);) await Task.Delay(20);
        Assert.Equal(0, batch.ActiveRows);
    }

    [Fact]
    public async Task TheBatchsKvNeverExceedsItsBoundRequestsWaitForMemoryAndAllAnswer()
    {
        // Room for two requests of about 100 tokens at a time, four rows: the others wait for memory, not for a row.
        long bytesPerToken = _model.Layout.BytesPerToken;
        using var batch = new GenerationBatch(_model, new GenerationBatchOptions { MaxRows = 4, MaxKvBytes = 220 * bytesPerToken });
        var client = _model.AsChatClient(_tokenizer, cache: null, new KvChatClientOptions { Batch = batch });
        int most = 0;
        using var watching = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            while (!watching.IsCancellationRequested)
            {
                most = Math.Max(most, batch.ReservedTokens);
                await Task.Delay(1);
            }
        });
        var questions = Enumerable.Range(0, 6).Select(i => new ChatMessage(ChatRole.User, $"Count to {i}, slowly, with words.")).ToArray();
        var requests = questions.Select(q => client.GetResponseAsync([q], Greedy(80))).ToArray();
        var answers = await Task.WhenAll(requests);
        await watching.CancelAsync();
        await watcher;
        var alone = _model.AsChatClient(_tokenizer);
        foreach (var (question, answer) in questions.Zip(answers)) Assert.Equal((await alone.GetResponseAsync([question], Greedy(80))).Text, answer.Text);
        Assert.InRange(most, 1, batch.MaxKvTokens);
        Assert.InRange(batch.LargestStep, 1, 2);

        // A request that could never fit is refused at once, naming the setting; a long answer ends where the memory does.
        Assert.Throws<ArgumentException>(() => batch.Join(SearchOptions.FromConfig(_model) with { MaxLength = batch.MaxKvTokens + 1 }));
        var forever = new ChatMessage(ChatRole.User, "Go on forever");
        var capped = await client.GetResponseAsync([forever], Greedy(5000));
        var room = batch.MaxKvTokens - (int)capped.Usage!.InputTokenCount!;
        var cappedAlone = await alone.GetResponseAsync([forever], Greedy(room));
        Assert.Equal(cappedAlone.Text, capped.Text);
        Assert.Equal(cappedAlone.FinishReason, capped.FinishReason);
    }

    /// <summary>
    /// 24 requests through 4 rows and a cache: some cancelled at random moments (waiting for a row, for the prompt turn, or
    /// mid-answer), some ended by a stop sequence, streamed and not. Every request not cancelled answers as it does alone,
    /// none fails otherwise, and the batch ends empty.
    /// </summary>
    [Fact]
    public async Task RequestsCancelledAtRandomMomentsNeverDisturbTheOthers()
    {
        using var cache = CacheTestKit.Open(_model, directory: null, Chunk);
        using var batch = new GenerationBatch(_model, new GenerationBatchOptions { MaxRows = 4, MaxPrefillTokensPerStep = 16 });
        var batched = _model.AsChatClient(_tokenizer, cache, new KvChatClientOptions { Batch = batch });
        var alone = _model.AsChatClient(_tokenizer);
        var system = new ChatMessage(ChatRole.System, SystemPrompt(64));
        var random = new Random(5);
        var plans = Enumerable.Range(0, 24).Select(i => (Question: new ChatMessage(ChatRole.User, $"Request {i}: say something about {i % 5}."),
            CancelAfterMs: i == 0 ? 0 : random.Next(3) == 0 ? random.Next(0, 60) : -1, Stream: i % 2 == 0,
            Options: i % 3 == 0 ? new ChatOptions { Temperature = 0, MaxOutputTokens = 30, StopSequences = ["e"] } : Greedy(30))).ToArray();
        var runs = plans.Select(plan => Task.Run(async () =>
        {
            using var cancel = new CancellationTokenSource();
            if (plan.CancelAfterMs >= 0) cancel.CancelAfter(plan.CancelAfterMs);
            try
            {
                if (!plan.Stream) return (await batched.GetResponseAsync([system, plan.Question], plan.Options, cancel.Token)).Text;
                var text = new System.Text.StringBuilder();
                await foreach (var update in batched.GetStreamingResponseAsync([system, plan.Question], plan.Options, cancel.Token)) text.Append(update.Text);
                return text.ToString();
            }
            catch (OperationCanceledException) when (cancel.IsCancellationRequested)
            {
                return null;
            }
        })).ToArray();
        var answers = await Task.WhenAll(runs);
        for (int i = 0; i < plans.Length; i++)
            if (answers[i] is { } answer) Assert.Equal((await alone.GetResponseAsync([system, plans[i].Question], plans[i].Options)).Text, answer);
        Assert.Contains(answers, a => a is null);
        Assert.Contains(answers, a => a is not null);
        for (var clock = System.Diagnostics.Stopwatch.StartNew(); batch.ActiveRows > 0 && clock.Elapsed < TimeSpan.FromSeconds(30);) await Task.Delay(20);
        Assert.Equal(0, batch.ActiveRows);
        Assert.Equal(0, batch.ReservedTokens);
        Assert.Equal(0, batch.Waiting);
    }

    public void Dispose()
    {
        _tokenizer.Dispose();
        _model.Dispose();
    }
}
