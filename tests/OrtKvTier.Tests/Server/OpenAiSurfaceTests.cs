#pragma warning disable OPENAI001 // the Responses client is marked for evaluation; it is what clients of this API call.
using System.ClientModel;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Responses;
using OrtKvTier.Model;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Server;

/// <summary>
/// What real OpenAI clients send, against the server process: strings that are not valid Unicode, NUL characters, every
/// sampling value OpenAI takes, harmless defaults, the Responses API (with the official .NET client), routes and bodies
/// of every 4xx.
/// </summary>
public sealed class OpenAiSurfaceTests : IClassFixture<OpenAiSurfaceTests.SharedServer>
{
    private readonly SharedServer _shared;

    public OpenAiSurfaceTests(SharedServer shared) => _shared = shared;

    public sealed class SharedServer : IDisposable
    {
        private readonly TempDir _temp = new();

        public SharedServer() => Server = ServerProcess.Start(_temp.Sub("cache"),
            ("Server:ApiKeys:0:Key", "key-alice"), ("Server:ApiKeys:0:Tenant", "alice"), ("Server:ApiKeys:1:Key", "key-bob"), ("Server:ApiKeys:1:Tenant", "bob"), ("Server:MaxConcurrent", "2"), ("Server:MaxQueued", "16"),
            ("Server:MaxRequestBodyBytes", "1048576"));

        internal ServerProcess Server { get; }

        public void Dispose()
        {
            Server.Dispose();
            _temp.Dispose();
        }
    }

    private async Task<(HttpStatusCode Status, string Body)> Post(string path, byte[] body, string key = "key-alice")
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) };
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_shared.Server.BaseUri, path)) { Content = new ByteArrayContent(body) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        using var response = await http.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    private Task<(HttpStatusCode Status, string Body)> Post(string path, string json, string key = "key-alice") => Post(path, Encoding.UTF8.GetBytes(json), key);

    private static string Chat(string contentJson, string extra = "", bool stream = false) =>
        $$"""{"model": "tiny", "max_tokens": 4, "temperature": 0, "stream": {{(stream ? "true" : "false")}}, "messages": [{"role": "user", "content": {{contentJson}}}]{{extra}}}""";

    private static JsonElement Error(string body) => JsonDocument.Parse(body).RootElement.GetProperty("error");

    private static int PromptTokens(string body) => JsonDocument.Parse(body).RootElement.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();

    private static string Text(string body) => JsonDocument.Parse(body).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task StringsThatAreNotUnicodeAre400sNamingTheField(bool stream)
    {
        // A string cut in the middle of an emoji (what the JavaScript SDK sends), then bytes that are not UTF-8.
        var (status, body) = await Post("v1/chat/completions", Chat("\"a\\ud800b\"", stream: stream));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("messages[0].content", Error(body).GetProperty("param").GetString());
        Assert.Contains("Unicode", Error(body).GetProperty("message").GetString());

        var bytes = Encoding.UTF8.GetBytes(Chat("\"caf__\"", stream: stream));
        int at = bytes.AsSpan().IndexOf("caf__"u8) + 3;
        bytes[at] = 0xC3;
        bytes[at + 1] = 0x28;
        (status, body) = await Post("v1/chat/completions", bytes);
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("invalid_request_error", Error(body).GetProperty("type").GetString());

        (status, body) = await Post("v1/responses", """{"model": "tiny", "input": "half an emoji \ud83d"}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("input", Error(body).GetProperty("param").GetString());
    }

    [Fact]
    public async Task MessagesMarkedAsDocumentsAreServedAndAMarkThatIsNotABooleanIsA400()
    {
        const string messages = """[{"role": "system", "content": "Answer from the document."}, {"role": "user", "content": "The ferry leaves every morning at nine from the harbour of Selwick, and on weekdays only in winter.", "ortkv_document": DOC}, {"role": "user", "content": "When does the ferry leave?"}]""";
        var (status, body) = await Post("v1/chat/completions", $$"""{"model": "tiny", "max_tokens": 3, "temperature": 0, "messages": {{messages.Replace("DOC", "true")}}}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var (_, exact) = await Post("v1/chat/completions", $$"""{"model": "tiny", "max_tokens": 3, "temperature": 0, "messages": {{messages.Replace("DOC", "false")}}}""");
        Assert.Equal(PromptTokens(exact), PromptTokens(body)); // the same prompt; only where its document's KV comes from may differ
        var placed = JsonDocument.Parse(body).RootElement.GetProperty("ortkv_documents").EnumerateArray().Single();
        Assert.True(placed.GetProperty("offset").GetInt32() > 0 && placed.GetProperty("tokens").GetInt32() > 0, body);
        Assert.False(JsonDocument.Parse(exact).RootElement.TryGetProperty("ortkv_documents", out _));
        string placedText = Text(body);
        (status, body) = await Post("v1/chat/completions", $$"""{"model": "tiny", "max_tokens": 3, "messages": {{messages.Replace("DOC", "\"yes\"")}}}""");
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("messages[1].ortkv_document", Error(body).GetProperty("param").GetString());

        // Streamed: the finishing chunk says where the document was placed; the same text as not streamed (the same placed KV).
        (status, body) = await Post("v1/chat/completions", $$"""{"model": "tiny", "max_tokens": 3, "temperature": 0, "stream": true, "messages": {{messages.Replace("DOC", "true")}}}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var chunks = Events(body).ToList();
        var finishing = chunks.Single(c => c.GetProperty("choices").EnumerateArray().Any(choice => choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String));
        Assert.Equal(placed.GetProperty("offset").GetInt32(), finishing.GetProperty("ortkv_documents").EnumerateArray().Single().GetProperty("offset").GetInt32());
        Assert.Single(chunks, c => c.TryGetProperty("ortkv_documents", out _));
        Assert.Equal(placedText, string.Concat(chunks.Select(c => c.GetProperty("choices").EnumerateArray().Select(choice =>
            choice.GetProperty("delta").TryGetProperty("content", out var piece) ? piece.GetString() : "").FirstOrDefault())));
    }

    /// <summary>A Responses input item marked as a document: the response (streamed or not, and as stored) says where it was placed; a mark that is not a boolean is a 400.</summary>
    [Fact]
    public async Task ResponsesInputItemsMarkedAsDocumentsAreServedAndReported()
    {
        const string input = """[{"role": "user", "content": "The ferry leaves every morning at nine from the harbour of Selwick, and on weekdays only in winter.", "ortkv_document": DOC}, {"role": "user", "content": "When does the ferry leave?"}]""";
        string Request(string mark, bool stream) => $$"""{"model": "tiny", "max_output_tokens": 16, "temperature": 0, "stream": {{(stream ? "true" : "false")}}, "instructions": "Answer from the document.", "input": {{input.Replace("DOC", mark)}}}""";
        var (status, body) = await Post("v1/responses", Request("true", stream: false));
        Assert.Equal(HttpStatusCode.OK, status);
        var response = JsonDocument.Parse(body).RootElement;
        var placed = response.GetProperty("ortkv_documents").EnumerateArray().Single();
        Assert.True(placed.GetProperty("offset").GetInt32() > 0 && placed.GetProperty("tokens").GetInt32() > 0, body);
        var (_, exact) = await Post("v1/responses", Request("false", stream: false));
        Assert.False(JsonDocument.Parse(exact).RootElement.TryGetProperty("ortkv_documents", out _));
        Assert.Equal(JsonDocument.Parse(exact).RootElement.GetProperty("usage").GetProperty("input_tokens").GetInt32(), response.GetProperty("usage").GetProperty("input_tokens").GetInt32());

        (status, body) = await Post("v1/responses", Request("true", stream: true));
        Assert.Equal(HttpStatusCode.OK, status);
        var completed = Events(body).Single(e => e.GetProperty("type").GetString() is "response.completed" or "response.incomplete").GetProperty("response");
        Assert.Equal(placed.GetProperty("offset").GetInt32(), completed.GetProperty("ortkv_documents").EnumerateArray().Single().GetProperty("offset").GetInt32());
        using (var http = new HttpClient())
        {
            http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", "key-alice");
            var stored = JsonDocument.Parse(await http.GetStringAsync(new Uri(_shared.Server.BaseUri, "v1/responses/" + completed.GetProperty("id").GetString()))).RootElement;
            Assert.True(stored.TryGetProperty("ortkv_documents", out _), stored.ToString());
        }

        (status, body) = await Post("v1/responses", Request("1", stream: false));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Equal("input[0].ortkv_document", Error(body).GetProperty("param").GetString());
    }

    /// <summary>The JSON objects of a server-sent event stream's <c>data:</c> lines (without the final <c>[DONE]</c>).</summary>
    private static IEnumerable<JsonElement> Events(string stream) =>
        stream.Split('\n').Where(line => line.StartsWith("data: ", StringComparison.Ordinal) && line != "data: [DONE]")
            .Select(line => JsonDocument.Parse(line["data: ".Length..]).RootElement);

    [Fact]
    public async Task ANulCharacterCutsNothing()
    {
        var (status, withNul) = await Post("v1/chat/completions", Chat("\"What is\\u0000 the default password of the router?\""));
        Assert.Equal(HttpStatusCode.OK, status);
        // The same text with another one-byte control character in the NUL's place: the tokenizer's count for the whole text.
        var (_, withSoh) = await Post("v1/chat/completions", Chat("\"What is\\u0001 the default password of the router?\""));
        var (_, cut) = await Post("v1/chat/completions", Chat("\"What is\""));
        Assert.Equal(PromptTokens(withSoh), PromptTokens(withNul));
        Assert.True(PromptTokens(withNul) > PromptTokens(cut) + 5, $"{PromptTokens(withNul)} prompt tokens with the NUL, {PromptTokens(cut)} for the text before it");

        // In the system message too: the user's question still arrives.
        var (_, system) = await Post("v1/chat/completions", """{"model": "tiny", "max_tokens": 2, "messages": [{"role": "system", "content": "Be brief.\u0000"}, {"role": "user", "content": "Where is the reset button on the back of the router?"}]}""");
        var (_, noNul) = await Post("v1/chat/completions", """{"model": "tiny", "max_tokens": 2, "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is the reset button on the back of the router?"}]}""");
        Assert.Equal(PromptTokens(noNul) + 1, PromptTokens(system));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task TopPZeroIsGreedyAndEverySamplingValueOpenAiTakesIsServed(bool stream)
    {
        foreach (var extra in new[]
                 {
                     ", \"top_p\": 0", ", \"top_p\": 1", ", \"temperature\": 2", ", \"presence_penalty\": -2", ", \"frequency_penalty\": 2", ", \"seed\": -9223372036854775808",
                     ", \"logit_bias\": {\"5\": -100, \"7\": 100}", ", \"tools\": [], \"tool_choice\": \"none\", \"response_format\": {\"type\": \"text\"}", ", \"stop\": [\"x\"]",
                 })
        {
            var (status, body) = await Post("v1/chat/completions", Chat("\"Hello\"", extra, stream));
            Assert.True(status == HttpStatusCode.OK, $"{extra}: {status} {body}");
            if (stream) Assert.EndsWith("data: [DONE]\n\n", body);
        }
        var (_, greedy) = await Post("v1/chat/completions", Chat("\"Hello there\""));
        var (_, topPZero) = await Post("v1/chat/completions", Chat("\"Hello there\"", ", \"temperature\": 1, \"top_p\": 0"));
        Assert.Equal(Text(greedy), Text(topPZero));
    }

    [Theory]
    [InlineData(", \"top_p\": 1.5", "top_p")]
    [InlineData(", \"temperature\": -0.1", "temperature")]
    [InlineData(", \"presence_penalty\": 2.5", "presence_penalty")]
    [InlineData(", \"frequency_penalty\": \"high\"", "frequency_penalty")]
    [InlineData(", \"logit_bias\": {\"5\": 101}", "logit_bias.5")]
    [InlineData(", \"logit_bias\": {\"token\": 1}", "logit_bias")]
    [InlineData(", \"logit_bias\": {\"99999\": 1}", "logit_bias")]
    [InlineData(", \"max_tokens\": 1e400", "max_tokens")]
    [InlineData(", \"temperature\": 1e400", "temperature")]
    [InlineData(", \"tools\": [{\"type\": \"function\"}]", "tools")]
    [InlineData(", \"tool_choice\": \"required\"", "tool_choice")]
    [InlineData(", \"response_format\": {\"type\": \"json_object\"}", "response_format")]
    public async Task EveryValueOpenAiRefusesIsA400NamingItStreamingOrNot(string extra, string param)
    {
        foreach (var stream in new[] { false, true })
        {
            var (status, body) = await Post("v1/chat/completions", Chat("\"Hello\"", extra, stream));
            Assert.True(status == HttpStatusCode.BadRequest, $"{extra}: {status} {body}");
            Assert.Equal(param, Error(body).GetProperty("param").GetString());
        }
    }

    [Fact]
    public async Task PenaltiesAndLogitBiasChangeWhatIsGenerated()
    {
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        int x = tokenizer.Encode("x").Single();
        var (_, forced) = await Post("v1/chat/completions", Chat("\"Hello\"", $", \"logit_bias\": {{\"{x}\": 100}}"));
        Assert.Equal("xxxx", Text(forced));

        // Penalties reach the sampler (its arithmetic is GeneratorTests'): a long greedy answer changes under them.
        var (_, plain) = await Post("v1/chat/completions", Chat("\"Hello\"").Replace("\"max_tokens\": 4", "\"max_tokens\": 40"));
        var (_, penalised) = await Post("v1/chat/completions", Chat("\"Hello\"", ", \"frequency_penalty\": 2, \"presence_penalty\": 2").Replace("\"max_tokens\": 4", "\"max_tokens\": 40"));
        Assert.NotEqual(Text(plain), Text(penalised));
    }

    [Fact]
    public async Task EveryErrorStatusHasAnOpenAiBody()
    {
        using var http = new HttpClient();
        foreach (var (method, path, status) in new[] { ("GET", "v1/nothing", 404), ("POST", "v1/completions", 404), ("GET", "v1/chat/completions", 405), ("DELETE", "v1/models", 405) })
        {
            using var response = await http.SendAsync(new HttpRequestMessage(new HttpMethod(method), new Uri(_shared.Server.BaseUri, path)));
            Assert.Equal(status, (int)response.StatusCode);
            Assert.False(string.IsNullOrEmpty(Error(await response.Content.ReadAsStringAsync()).GetProperty("message").GetString()));
        }
        var (tooLarge, body) = await Post("v1/chat/completions", Chat(JsonSerializer.Serialize(new string('a', 2 << 20))));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, tooLarge);
        Assert.Equal("request_too_large", Error(body).GetProperty("code").GetString());

        using var model = await http.GetAsync(new Uri(_shared.Server.BaseUri, "v1/models/tiny"));
        Assert.Equal("tiny", JsonDocument.Parse(await model.Content.ReadAsStringAsync()).RootElement.GetProperty("id").GetString());
        using var missing = await http.GetAsync(new Uri(_shared.Server.BaseUri, "v1/models/gpt-4o"));
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Equal("model_not_found", Error(await missing.Content.ReadAsStringAsync()).GetProperty("code").GetString());
    }

    private ResponsesClient Responses(string key = "key-alice") =>
        new(new ApiKeyCredential(key), new ResponsesClientOptions { Endpoint = _shared.Server.OpenAiEndpoint, NetworkTimeout = TimeSpan.FromMinutes(1) });

    private static CreateResponseOptions Ask(string text, string? previous = null, bool stream = false)
    {
        var options = new CreateResponseOptions { Model = "tiny", MaxOutputTokenCount = 16, Temperature = 0, PreviousResponseId = previous, StreamingEnabled = stream ? true : null };
        options.InputItems.Add(ResponseItem.CreateUserMessageItem(text));
        return options;
    }

    [Fact]
    public async Task TheOfficialResponsesClientGetsTextUsageAndCachedTokensStreamingOrNot()
    {
        string manual = "Responses test. " + string.Join(' ', Enumerable.Repeat("The router's reset button is on the back; hold it for ten seconds.", 4));
        ResponseResult first = (await Responses().CreateResponseAsync(Ask(manual))).Value;
        Assert.Equal("tiny", first.Model);
        Assert.False(string.IsNullOrEmpty(first.GetOutputText()));
        Assert.Equal(0, first.Usage.InputTokenDetails.CachedTokenCount);
        Assert.Equal(16, first.Usage.OutputTokenCount);

        // The same input again, streamed: the text is the same and the prefix comes from the cache.
        var streamed = new StringBuilder();
        ResponseResult? completed = null;
        await foreach (var update in await Responses().CreateResponseStreamingAsync(Ask(manual, stream: true)))
        {
            if (update is StreamingResponseOutputTextDeltaUpdate delta) streamed.Append(delta.Delta);
            if (update is StreamingResponseCompletedUpdate done) completed = done.Response;
            if (update is StreamingResponseIncompleteUpdate cut) completed = cut.Response;
        }
        Assert.Equal(first.GetOutputText(), streamed.ToString());
        Assert.NotNull(completed);
        Assert.True(completed!.Usage.InputTokenDetails.CachedTokenCount >= first.Usage.InputTokenCount / 16 * 16 - 16,
            $"cached {completed.Usage.InputTokenDetails.CachedTokenCount} of {completed.Usage.InputTokenCount}");

        // previous_response_id continues the conversation: its prompt holds the first turn, restored from the cache.
        ResponseResult second = (await Responses().CreateResponseAsync(Ask("And how long do I hold it?", first.Id))).Value;
        Assert.Equal(first.Id, second.PreviousResponseId);
        Assert.True(second.Usage.InputTokenCount > first.Usage.InputTokenCount + first.Usage.OutputTokenCount);
        Assert.True(second.Usage.InputTokenDetails.CachedTokenCount >= first.Usage.InputTokenCount / 16 * 16 - 16);
        Assert.Equal(second.GetOutputText(), (await Responses().GetResponseAsync(second.Id)).Value.GetOutputText());

        // Another API key cannot continue (or read) it.
        var foreign = await Assert.ThrowsAsync<ClientResultException>(() => Responses("key-bob").CreateResponseAsync(Ask("Tell me.", first.Id)));
        Assert.Equal(404, foreign.Status);
        Assert.Equal(404, (await Assert.ThrowsAsync<ClientResultException>(() => Responses("key-bob").GetResponseAsync(first.Id))).Status);
    }

    [Fact]
    public async Task ResponsesTakesStructuredInputAndInstructions()
    {
        var (status, body) = await Post("v1/responses", """
            {"model": "tiny", "instructions": "Be brief.", "max_output_tokens": 16, "temperature": 0, "store": false, "metadata": {"app": "test"},
             "input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}, {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi."}]},
                       {"role": "user", "content": "Where is the reset button?"}],
             "tools": [], "tool_choice": "none", "text": {"format": {"type": "text"}}}
            """);
        Assert.True(status == HttpStatusCode.OK, body);
        var response = JsonDocument.Parse(body).RootElement;
        Assert.Equal("response", response.GetProperty("object").GetString());
        Assert.Equal("incomplete", response.GetProperty("status").GetString());
        Assert.Equal("max_output_tokens", response.GetProperty("incomplete_details").GetProperty("reason").GetString());
        Assert.Equal("test", response.GetProperty("metadata").GetProperty("app").GetString());
        Assert.Equal("output_text", response.GetProperty("output")[0].GetProperty("content")[0].GetProperty("type").GetString());
        // store: false keeps nothing to continue from.
        var (missing, _) = await Post("v1/responses", $$"""{"model": "tiny", "input": "Go on.", "previous_response_id": "{{response.GetProperty("id").GetString()}}"}""");
        Assert.Equal(HttpStatusCode.NotFound, missing);
        var (tooFew, error) = await Post("v1/responses", """{"model": "tiny", "input": "Go on.", "max_output_tokens": 4}""");
        Assert.Equal(HttpStatusCode.BadRequest, tooFew);
        Assert.Equal("max_output_tokens", Error(error).GetProperty("param").GetString());
    }
}
