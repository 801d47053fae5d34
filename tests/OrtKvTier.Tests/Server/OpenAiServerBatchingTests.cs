using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Server;

/// <summary>The server with its requests in one <see cref="GenerationBatch"/> (its default), as real clients at once see it.</summary>
public sealed class OpenAiServerBatchingTests : IDisposable
{
    private readonly TempDir _temp = new();

    private static string SystemPrompt(int tokens)
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var words = new List<string>();
        for (int i = 0; tokenizer.Encode(string.Join(' ', words)).Length < tokens; i++) words.Add($"rule{i % 41} is to answer in one line");
        return string.Join(' ', words);
    }

    private static ChatClient Client(ServerProcess server) =>
        new("tiny", new ApiKeyCredential("none"), new OpenAIClientOptions { Endpoint = server.OpenAiEndpoint, NetworkTimeout = TimeSpan.FromMinutes(2), RetryPolicy = new ClientRetryPolicy(maxRetries: 0) });

    private static async Task<JsonElement> Health(HttpClient http, ServerProcess server) =>
        JsonDocument.Parse(await http.GetStringAsync(new Uri(server.BaseUri, "health"))).RootElement.GetProperty("batch");

    [Fact]
    public async Task EightSimultaneousFirstTurnsShareOneComputationOfTheSystemPromptAndStreamTheirOwnAnswers()
    {
        using var server = ServerProcess.Start(_temp.Sub("cache"), ("OrtKvTier:BatchRows", "8"));
        string system = SystemPrompt(256);
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 24, Temperature = 0 };
        // Each question alone first, on a server that batches nothing, for the answers to compare with.
        var questions = Enumerable.Range(0, 8).Select(i => $"User {i} asks: what is {i * 7} minus {i}?").ToArray();
        string[] alone;
        using (var single = ServerProcess.Start(_temp.Sub("cache-single"), ("OrtKvTier:BatchRows", "1"), ("OrtKvTier:CacheEnabled", "false")))
            alone = questions.Select(q => Client(single).CompleteChat([new SystemChatMessage(system), new UserChatMessage(q)], options).Value.Content[0].Text).ToArray();

        using var start = new ManualResetEventSlim();
        var turns = questions.Select(q => Task.Run(() =>
        {
            start.Wait();
            var text = new StringBuilder();
            int cached = -1;
            foreach (var update in Client(server).CompleteChatStreaming([new SystemChatMessage(system), new UserChatMessage(q)], options))
            {
                foreach (var part in update.ContentUpdate) text.Append(part.Text);
                if (update.Usage?.InputTokenDetails?.CachedTokenCount is int c) cached = c;
            }
            return (Text: text.ToString(), Cached: cached);
        })).ToArray();
        start.Set();
        var answers = await Task.WhenAll(turns);

        Assert.Equal(alone, answers.Select(a => a.Text));
        var cachedTokens = answers.Select(a => a.Cached).Order().ToArray();
        Assert.True(cachedTokens[0] < 128 && cachedTokens.Skip(1).All(c => c >= 224), $"cached tokens of the eight first turns: {string.Join(' ', cachedTokens)} (one computes the system prompt, seven restore it)");
        using var http = new HttpClient();
        var batch = await Health(http, server);
        Assert.True(batch.GetProperty("largest_step").GetInt32() > 1, batch.ToString());
        Assert.Equal(0, batch.GetProperty("rows").GetInt32());
    }

    [Fact]
    public async Task ABatchWhoseKvMemoryIsFullRefusesWith429RatherThanExceedingIt()
    {
        // Four rows but KV memory for one long answer at a time (each is capped where the memory ends), three may run, nobody
        // may queue: two wait inside the batch for memory, the rest are 429s, never a 5xx, and
        // the reserved KV never passes the bound.
        using var model = KvModel.Load(TestPaths.Tiny);
        long bytes = 300 * model.Layout.BytesPerToken;
        using var server = ServerProcess.Start(_temp.Sub("cache"), ("OrtKvTier:BatchRows", "4"), ("OrtKvTier:BatchKvBytes", bytes.ToString()),
            ("Server:MaxConcurrent", "3"), ("Server:MaxQueued", "0"));
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(2) };
        int max = (await Health(http, server)).GetProperty("kv_tokens_max").GetInt32();
        Assert.Equal(300, max);
        int most = 0;
        using var watching = new CancellationTokenSource();
        var watcher = Task.Run(async () =>
        {
            while (!watching.IsCancellationRequested)
            {
                most = Math.Max(most, (await Health(http, server)).GetProperty("kv_tokens_reserved").GetInt32());
                await Task.Delay(5);
            }
        });
        var body = JsonSerializer.Serialize(new { model = "tiny", messages = new[] { new { role = "user", content = "Tell me a long story." } }, max_tokens = 400, temperature = 0 });
        var requests = Enumerable.Range(0, 8).Select(_ => http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), new StringContent(body, Encoding.UTF8, "application/json"))).ToArray();
        var statuses = (await Task.WhenAll(requests)).Select(r => r.StatusCode).ToArray();
        await watching.CancelAsync();
        await watcher;
        Assert.All(statuses, s => Assert.Contains(s, new[] { HttpStatusCode.OK, HttpStatusCode.TooManyRequests }));
        Assert.Contains(HttpStatusCode.OK, statuses);
        Assert.Contains(HttpStatusCode.TooManyRequests, statuses);
        Assert.InRange(most, 0, max);

        // A conversation longer than the whole batch's KV is a 400 that says so, before anything runs.
        var tooLong = JsonSerializer.Serialize(new { model = "tiny", messages = new[] { new { role = "user", content = string.Join(' ', Enumerable.Repeat("word", 400)) } }, max_tokens = 4 });
        using var refused = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), new StringContent(tooLong, Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("KV", await refused.Content.ReadAsStringAsync());
    }

    public void Dispose() => _temp.Dispose();
}
