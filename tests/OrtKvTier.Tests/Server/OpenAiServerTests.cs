using System.ClientModel;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using OrtKvTier.ModelBuilder;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Server;

/// <summary>The server sample, started as a real process, used with the official OpenAI .NET client (and raw HTTP for what a client library hides).</summary>
public sealed class OpenAiServerTests : IClassFixture<OpenAiServerTests.SharedServer>
{
    private static readonly string System = string.Join(' ', Enumerable.Repeat("You answer questions about the router manual, briefly and exactly.", 4));
    private readonly SharedServer _shared;

    public OpenAiServerTests(SharedServer shared) => _shared = shared;

    /// <summary>One server for the class: API keys for two tenants, two generations at a time.</summary>
    public sealed class SharedServer : IDisposable
    {
        private readonly TempDir _temp = new();

        public SharedServer() => Server = ServerProcess.Start(_temp.Sub("cache"),
            ("Server:ApiKeys:0:Key", "key-alice"), ("Server:ApiKeys:0:Tenant", "alice"), ("Server:ApiKeys:1:Key", "key-bob"), ("Server:ApiKeys:1:Tenant", "bob"), ("Server:MaxConcurrent", "2"), ("Server:MaxQueued", "8"));

        internal ServerProcess Server { get; }

        public void Dispose()
        {
            Server.Dispose();
            _temp.Dispose();
        }
    }

    private ChatClient Client(string key = "key-alice", string model = "tiny") =>
        new(model, new ApiKeyCredential(key), new OpenAIClientOptions { Endpoint = _shared.Server.OpenAiEndpoint, NetworkTimeout = TimeSpan.FromMinutes(1) });

    private static ChatCompletionOptions Greedy(int tokens = 6) => new() { MaxOutputTokenCount = tokens, Temperature = 0 };

    [Fact]
    public void TheSecondRequestOfAConversationReportsCachedTokensAndStreamingGivesTheSameText()
    {
        var client = Client();
        List<ChatMessage> conversation = [new SystemChatMessage("Conversation test. " + System), new UserChatMessage("How do I reset it?")];
        ChatCompletion first = client.CompleteChat(conversation, Greedy());
        Assert.Equal(0, first.Usage.InputTokenDetails?.CachedTokenCount ?? 0);
        Assert.True(first.Usage.InputTokenCount > 32);
        Assert.Equal(ChatFinishReason.Length, first.FinishReason);
        conversation.Add(new AssistantChatMessage(first.Content[0].Text));
        conversation.Add(new UserChatMessage("And the serial number?"));
        ChatCompletion second = client.CompleteChat(conversation, Greedy());
        Assert.True(second.Usage.InputTokenDetails.CachedTokenCount >= first.Usage.InputTokenCount / 16 * 16 - 16,
            $"cached {second.Usage.InputTokenDetails.CachedTokenCount} of {second.Usage.InputTokenCount}; the first turn had {first.Usage.InputTokenCount}");

        var streamed = new StringBuilder();
        ChatTokenUsage? usage = null;
        ChatFinishReason? finish = null;
        foreach (var update in client.CompleteChatStreaming(conversation, Greedy()))
        {
            foreach (var part in update.ContentUpdate) streamed.Append(part.Text);
            usage ??= update.Usage;
            finish ??= update.FinishReason;
        }
        Assert.Equal(second.Content[0].Text, streamed.ToString());
        Assert.Equal(ChatFinishReason.Length, finish);
        Assert.NotNull(usage);
        Assert.True(usage!.InputTokenDetails.CachedTokenCount >= second.Usage.InputTokenCount / 16 * 16 - 16);
    }

    [Fact]
    public void TenantsFromApiKeysNeverHitEachOthersEntries()
    {
        List<ChatMessage> conversation = [new SystemChatMessage("Tenant test. " + System), new UserChatMessage("What is the default password?")];
        Assert.Equal(0, Client("key-alice").CompleteChat(conversation, Greedy()).Value.Usage.InputTokenDetails?.CachedTokenCount ?? 0);
        var bob = Client("key-bob").CompleteChat(conversation, Greedy()).Value;
        Assert.Equal(0, bob.Usage.InputTokenDetails?.CachedTokenCount ?? 0);
        Assert.True(Client("key-alice").CompleteChat(conversation, Greedy()).Value.Usage.InputTokenDetails.CachedTokenCount >= 32);
        Assert.True(Client("key-bob").CompleteChat(conversation, Greedy()).Value.Usage.InputTokenDetails.CachedTokenCount >= 32);
    }

    [Fact]
    public void ModelsListsTheServedModelAndAWrongKeyOrModelIsRefusedWithOpenAisErrors()
    {
        var models = new OpenAIClient(new ApiKeyCredential("key-alice"), new OpenAIClientOptions { Endpoint = _shared.Server.OpenAiEndpoint }).GetOpenAIModelClient().GetModels().Value;
        Assert.Contains(models, m => m.Id == "tiny");
        var wrongKey = Assert.Throws<ClientResultException>(() => Client("nobody").CompleteChat([new UserChatMessage("hi")], Greedy()));
        Assert.Equal(401, wrongKey.Status);
        var wrongModel = Assert.Throws<ClientResultException>(() => Client(model: "gpt-4o").CompleteChat([new UserChatMessage("hi")], Greedy()));
        Assert.Equal(400, wrongModel.Status);
        Assert.Contains("model_not_found", wrongModel.Message);
    }

    [Theory]
    [InlineData("{not json", "invalid_json")]
    [InlineData("[1, 2]", "invalid_json")]
    [InlineData("""{"messages": [{"role": "user", "content": "hi"}]}""", "missing_required_parameter")]
    [InlineData("""{"model": "tiny"}""", "missing_required_parameter")]
    [InlineData("""{"model": "tiny", "messages": []}""", "missing_required_parameter")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "robot", "content": "hi"}]}""", "invalid_value")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": 42}]}""", "invalid_type")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}""", "invalid_value")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}""", "invalid_value")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}""", "invalid_value")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "many"}""", "invalid_type")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}""", "unsupported_value")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}""", "unsupported_parameter")]
    [InlineData("""{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}""", "invalid_type")]
    [InlineData("""{"model": "nope", "messages": [{"role": "user", "content": "hi"}]}""", "model_not_found")]
    public async Task BadInputIsA400WithAnOpenAiErrorBodyNeverA500(string body, string code)
    {
        using var http = new HttpClient();
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_shared.Server.BaseUri, "v1/chat/completions")) { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        request.Headers.Authorization = new("Bearer", "key-alice");
        using var response = await http.SendAsync(request);
        var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal("invalid_request_error", json.GetProperty("error").GetProperty("type").GetString());
        Assert.Equal(code, json.GetProperty("error").GetProperty("code").GetString());
        Assert.False(string.IsNullOrWhiteSpace(json.GetProperty("error").GetProperty("message").GetString()));
    }

    [Fact]
    public void APromptLongerThanTheModelTakesIsA400ContextLengthExceededStreamingOrNot()
    {
        var tooLong = string.Join(' ', Enumerable.Repeat("lorem ipsum dolor sit amet", 2000));
        var plain = Assert.Throws<ClientResultException>(() => Client().CompleteChat([new UserChatMessage(tooLong)], Greedy()));
        Assert.Equal(400, plain.Status);
        Assert.Contains("context_length_exceeded", plain.Message);
        var streaming = Assert.Throws<ClientResultException>(() => Client().CompleteChatStreaming([new UserChatMessage(tooLong)], Greedy()).ToList());
        Assert.Equal(400, streaming.Status);
    }

    [Fact]
    public async Task ConcurrentClientsAllGetTheirAnswer()
    {
        var tasks = Enumerable.Range(0, 6).Select(i => Task.Run(() =>
            Client(i % 2 == 0 ? "key-alice" : "key-bob").CompleteChat([new SystemChatMessage("Load test. " + System), new UserChatMessage($"Question {i}?")], Greedy(4)).Value));
        var answers = await Task.WhenAll(tasks);
        Assert.All(answers, a => Assert.Equal(4, a.Usage.OutputTokenCount));
    }
}

/// <summary>
/// A server with one generation slot and no queue: a client that disconnects frees the slot; a full server answers 429.
/// The model is the tiny one with an 8192-token context, so that a long answer is thousands of pieces; the server's
/// request log says how many pieces a stream had sent when its client left, which is what these tests check (never a
/// wall-clock time: a busy machine stretches those).
/// </summary>
public sealed class OpenAiServerLimitsTests : IDisposable
{
    private const int LongAnswer = 3000;
    private readonly TempDir _temp = new();
    private readonly ServerProcess _server;

    public OpenAiServerLimitsTests()
    {
        string model = TestPaths.Build(_temp.Sub("tiny"), ModelShape.Tiny with { MaxLength = 8192 });
        _server = ServerProcess.Start(_temp.Sub("cache"), ("OrtKvTier:ModelFolder", model), ("Server:MaxConcurrent", "1"), ("Server:MaxQueued", "0"),
            ("Server:RetryAfterSeconds", "2"), ("Server:StreamWriteTimeoutSeconds", "5"), ("Logging:LogLevel:OrtKvTier.Server.Requests", "Information"));
    }

    // Greedy, and a prompt whose greedy answer on this model never meets the end token: every long answer is as long.
    private static StringContent Body(int maxTokens, bool stream) => new(
        JsonSerializer.Serialize(new { model = "tiny", messages = new[] { new { role = "user", content = "Hello" } }, max_tokens = maxTokens, temperature = 0, stream }),
        Encoding.UTF8, "application/json");

    private async Task<int> Running(HttpClient http) =>
        JsonDocument.Parse(await http.GetStringAsync(new Uri(_server.BaseUri, "health"))).RootElement.GetProperty("running").GetInt32();

    [Fact]
    public async Task AFullServerAnswers429WithRetryAfterAndADisconnectingClientStopsItsGeneration()
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) };
        var endpoint = new Uri(_server.BaseUri, "v1/chat/completions");
        // Nobody leaving, the long answer runs to its length: it never meets the end token.
        using (var full = await http.PostAsync(endpoint, Body(LongAnswer, stream: false)))
        {
            full.EnsureSuccessStatusCode();
            var choice = JsonDocument.Parse(await full.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0];
            Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        }

        // A streaming request takes the only slot (on a socket of its own, so that leaving is closing it, nothing else)...
        using var socket = new System.Net.Sockets.TcpClient();
        await socket.ConnectAsync(_server.BaseUri.Host, _server.BaseUri.Port);
        var stream = socket.GetStream();
        var body = await Body(LongAnswer, stream: true).ReadAsByteArrayAsync();
        await stream.WriteAsync(Encoding.ASCII.GetBytes($"POST /v1/chat/completions HTTP/1.1\r\nHost: {_server.BaseUri.Authority}\r\nContent-Type: application/json\r\nContent-Length: {body.Length}\r\n\r\n"));
        await stream.WriteAsync(body);
        var reader = new StreamReader(stream);
        Assert.StartsWith("HTTP/1.1 200", await reader.ReadLineAsync());
        while (await reader.ReadLineAsync() is { } line && !line.Contains("data: ", StringComparison.Ordinal)) { }
        Assert.Equal(1, await Running(http));

        // ...so another is refused at once, saying when to come back.
        using var refused = await http.PostAsync(endpoint, Body(4, stream: false));
        Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        Assert.Equal("2", refused.Headers.GetValues("Retry-After").Single());
        Assert.Equal("rate_limit_exceeded", JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement.GetProperty("error").GetProperty("code").GetString());

        // The streaming client disconnects: its generation stops (the slot is freed) long before the answer would have ended,
        // whether the server sees the disconnect or, waiting on a full socket, only notices nothing was taken for 5 s.
        socket.Client.LingerState = new System.Net.Sockets.LingerOption(true, 0);
        socket.Close();
        for (var clock = Stopwatch.StartNew(); await Running(http) > 0; await Task.Delay(20))
            Assert.True(clock.Elapsed < TimeSpan.FromMinutes(1), "the slot is still taken a minute after its client left: " + _server.Log);
        var left = await LeftAfter();
        Assert.True(left < LongAnswer / 2, $"the stream had sent {left} of {LongAnswer} pieces when its client left: the generation did not stop");
        (await http.PostAsync(endpoint, Body(4, stream: false))).EnsureSuccessStatusCode();
    }

    // The request log line of the stream whose client left (written as the request ends, just after its slot is freed).
    private async Task<int> LeftAfter()
    {
        var pattern = new System.Text.RegularExpressions.Regex(@"client left after (\d+) streamed pieces");
        for (var clock = Stopwatch.StartNew(); clock.Elapsed < TimeSpan.FromMinutes(1); await Task.Delay(20))
            if (pattern.Match(_server.Log) is { Success: true } match) return int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        throw new Xunit.Sdk.XunitException("no request log line says the client left: " + _server.Log);
    }

    public void Dispose()
    {
        _server.Dispose();
        _temp.Dispose();
    }
}
