using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Server;

/// <summary>
/// 10,000 generated request bodies against the server process, streamed and not: random JSON shapes and types, strings
/// with lone surrogates, NUL and control characters, bytes that are not UTF-8, numbers at and past every edge, huge
/// arrays, deep nesting. No 500, no hang, no stack trace in the log, and the server answers /health after.
/// </summary>
public sealed class OpenAiServerFuzzTests : IDisposable
{
    private const int Bodies = 10_000;
    private readonly TempDir _temp = new();
    private readonly ServerProcess _server;

    public OpenAiServerFuzzTests() => _server = ServerProcess.Start(_temp.Sub("cache"),
        ("OrtKvTier:DefaultMaxOutputTokens", "3"), ("Server:MaxConcurrent", "2"), ("Server:MaxQueued", "64"), ("Server:MaxRequestBodyBytes", "262144"),
        ("Logging:LogLevel:Default", "Warning"));

    [Fact]
    public async Task NoBodyMakesA500OrAHang()
    {
        var random = new Random(20261202);
        var bodies = Enumerable.Range(0, Bodies).Select(_ => BodyFuzzer.Next(random)).ToArray();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var statuses = new System.Collections.Concurrent.ConcurrentDictionary<int, int>();
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int next = -1;
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(Enumerable.Range(0, 8).Select(async _ =>
        {
            for (int i; (i = Interlocked.Increment(ref next)) < bodies.Length;)
            {
                var (path, body, valid) = bodies[i];
                using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(_server.BaseUri, path)) { Content = new ByteArrayContent(body) };
                request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
                try
                {
                    using var response = await http.SendAsync(request);
                    string text = await response.Content.ReadAsStringAsync();
                    statuses.AddOrUpdate((int)response.StatusCode, 1, (_, n) => n + 1);
                    if (valid && response.StatusCode != HttpStatusCode.OK || (int)response.StatusCode >= 500 || text.Contains("server_error", StringComparison.Ordinal) || (int)response.StatusCode >= 400 && !text.Contains("\"error\"", StringComparison.Ordinal))
                        failures.Enqueue($"{path} {(int)response.StatusCode} {Show(body)} → {text[..Math.Min(300, text.Length)]}");
                }
                catch (Exception e) when (e is TaskCanceledException or HttpRequestException)
                {
                    failures.Enqueue($"{path} no answer ({e.GetType().Name}: {e.Message}) to {Show(body)}");
                }
            }
        }));
        using var health = await http.GetAsync(new Uri(_server.BaseUri, "health"));
        var summary = string.Join(", ", statuses.OrderBy(s => s.Key).Select(s => $"{s.Key}: {s.Value}"));
        Assert.True(failures.IsEmpty, $"{failures.Count} of {Bodies} failed ({summary}); first: {string.Join("\n", failures.Take(5))}\nserver log:\n{_server.Log[..Math.Min(6000, _server.Log.Length)]}");
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        Assert.DoesNotContain("   at ", _server.Log);
        Assert.True(statuses.GetValueOrDefault(200) > Bodies / 5, $"too few bodies were valid to test generation: {summary}");
        System.Console.WriteLine($"fuzz: {Bodies} bodies in {clock.Elapsed.TotalSeconds:F1} s: {summary}");
    }

    private static string Show(byte[] body)
    {
        var text = Encoding.UTF8.GetString(body);
        return text.Length <= 300 ? text : text[..300] + "…";
    }

    public void Dispose()
    {
        _server.Dispose();
        _temp.Dispose();
    }
}

/// <summary>Request bodies near and far from valid: a valid body with fields replaced by hostile values, or raw hostile JSON and bytes.</summary>
internal static class BodyFuzzer
{
    private static readonly string[] Fields =
    [
        "model", "messages", "input", "instructions", "max_tokens", "max_completion_tokens", "max_output_tokens", "temperature", "top_p", "presence_penalty",
        "frequency_penalty", "logit_bias", "seed", "stop", "stream", "stream_options", "n", "tools", "tool_choice", "response_format", "text", "user",
        "previous_response_id", "store", "metadata", "logprobs", "reasoning", "background",
    ];

    private static readonly string[] Numbers =
    [
        "0", "-0", "1", "-1", "2", "0.5", "1.0000001", "2.0000001", "-2.0000001", "100", "101", "-101", "16", "15", "2147483647", "2147483648", "-2147483649",
        "9223372036854775807", "9223372036854775808", "-9223372036854775809", "1e400", "-1e400", "1e-400", "4.9e-324", "1.7976931348623157e308", "0e0", "3",
    ];

    private static readonly string[] Strings =
    [
        "\"\"", "\"tiny\"", "\"hi\"", "\"a\\ud800b\"", "\"\\udc00\"", "\"\\ud83d\\ude00\"", "\"x\\u0000y\"", "\"\\u0000\"", "\"\\u0001\\u001f\\u007f\"", "\"\\t\\n\\r\"",
        "\"user\"", "\"system\"", "\"assistant\"", "\"none\"", "\"auto\"", "\"text\"", "\"input_text\"", "\"message\"", "\"\\\\u0000\"", "\"🙂\"",
    ];

    /// <summary>A route, a body for it, and whether the body is valid (it must be served).</summary>
    public static (string Path, byte[] Body, bool Valid) Next(Random random)
    {
        string anyPath = random.Next(4) == 0 ? "v1/responses" : "v1/chat/completions";
        switch (random.Next(10))
        {
            case 0: return (anyPath, RawBytes(random), false);
            case 1: return (anyPath, Encoding.UTF8.GetBytes(Nested(random, random.Next(2) == 0 ? random.Next(60, 70) : random.Next(100, 5000))), false);
            case 2: return (anyPath, Encoding.UTF8.GetBytes(Value(random, 3)), false);
            case 3 or 4 or 5:
                var body = Valid(random, out bool responses);
                return (responses ? "v1/responses" : "v1/chat/completions", Encoding.UTF8.GetBytes(body), true);
            default: return (anyPath, Mutated(random), false);
        }
    }

    private static readonly string[] LegalEdges =
    [
        "\"temperature\": 0", "\"temperature\": 2", "\"top_p\": 0", "\"top_p\": 1", "\"presence_penalty\": -2", "\"frequency_penalty\": 2", "\"seed\": -9223372036854775808",
        "\"seed\": 9223372036854775807", "\"stop\": [\"\\u0000\", \"a\", \"🙂\", \"\\n\"]", "\"logit_bias\": {\"0\": 100, \"511\": -100}", "\"n\": 1", "\"tools\": []",
        "\"tool_choice\": \"none\"", "\"user\": \"\\u0000\"", "\"stream_options\": {\"include_usage\": true}", "\"metadata\": {}",
    ];

    private static readonly string[] LegalTexts = ["\"x\\u0000y\"", "\"\\u0001\\u001f\\u007f\"", "\"\"", "\"🙂 emoji\"", "\"\\t\\n\\r\"", "\"<|user|> tags\"", "\"\\\\u0000\""];

    /// <summary>A valid body with legal values at their edges: it must be served.</summary>
    private static string Valid(Random random, out bool responses)
    {
        responses = random.Next(2) == 0;
        var text = Pick(random, LegalTexts);
        var fields = new List<string>
        {
            "\"model\": \"tiny\"", responses ? $"\"input\": {text}" : $"\"messages\": [{{\"role\": \"user\", \"content\": {text}}}]",
            responses ? "\"max_output_tokens\": 16" : $"\"max_tokens\": {random.Next(1, 4)}", $"\"stream\": {(random.Next(2) == 0 ? "true" : "false")}",
        };
        for (int i = random.Next(1, 3); i > 0; i--) fields.Add(Pick(random, LegalEdges));
        return "{" + string.Join(", ", fields) + "}";
    }

    private static byte[] Mutated(Random random)
    {
        bool responses = random.Next(2) == 0;
        var fields = new Dictionary<string, string>
        {
            ["model"] = "\"tiny\"",
            [responses ? "input" : "messages"] = responses && random.Next(2) == 0 ? Pick(random, Strings) : Messages(random),
            [responses ? "max_output_tokens" : "max_tokens"] = random.Next(2) == 0 ? "16" : "2",
            ["stream"] = random.Next(2) == 0 ? "true" : "false",
        };
        for (int i = random.Next(4); i > 0; i--) fields[Pick(random, Fields)] = Value(random, 2);
        for (int i = random.Next(3); i > 0; i--) fields.Remove(Pick(random, fields.Keys.ToArray()));
        var json = "{" + string.Join(", ", fields.Select(f => $"\"{f.Key}\": {f.Value}")) + "}";
        var bytes = Encoding.UTF8.GetBytes(json);
        if (random.Next(8) == 0) bytes[random.Next(bytes.Length)] = (byte)random.Next(0x80, 0x100);
        if (random.Next(16) == 0) bytes = bytes[..random.Next(bytes.Length)];
        return bytes;
    }

    private static string Messages(Random random)
    {
        int count = random.Next(20) == 0 ? random.Next(1000, 5000) : random.Next(0, 4);
        var roles = new[] { "\"user\"", "\"system\"", "\"assistant\"", "\"developer\"", "\"tool\"", "null", "1" };
        return "[" + string.Join(", ", Enumerable.Range(0, count).Select(_ => random.Next(10) switch
        {
            0 => Value(random, 2),
            1 => $"{{\"role\": {Pick(random, roles)}, \"content\": [{{\"type\": {Pick(random, Strings)}, \"text\": {Pick(random, Strings)}}}]}}",
            _ => $"{{\"role\": {(random.Next(4) == 0 ? Pick(random, roles) : "\"user\"")}, \"content\": {(random.Next(3) == 0 ? Value(random, 1) : Pick(random, Strings))}}}",
        })) + "]";
    }

    private static string Value(Random random, int depth) => random.Next(depth > 0 ? 8 : 5) switch
    {
        0 => Pick(random, Numbers),
        1 => Pick(random, Strings),
        2 => random.Next(2) == 0 ? "true" : "false",
        3 => "null",
        4 => "\"" + new string((char)random.Next(0x20, 0x7f), random.Next(0, 64)).Replace("\\", "/").Replace("\"", "'") + "\"",
        // A huge array holds plain values only: bodies stay under a megabyte or so, over the server's limit or not.
        5 when random.Next(20) == 0 => "[" + string.Join(", ", Enumerable.Range(0, random.Next(1000, 10000)).Select(_ => Value(random, 0))) + "]",
        5 => "[" + string.Join(", ", Enumerable.Range(0, random.Next(4)).Select(_ => Value(random, depth - 1))) + "]",
        _ => "{" + string.Join(", ", Enumerable.Range(0, random.Next(4)).Select(_ => $"\"{Pick(random, Fields)}\": {Value(random, depth - 1)}")) + "}",
    };

    private static string Nested(Random random, int depth)
    {
        var open = new StringBuilder();
        var close = new StringBuilder();
        for (int i = 0; i < depth; i++)
        {
            bool array = random.Next(2) == 0;
            open.Append(array ? "[" : "{\"messages\": ");
            close.Insert(0, array ? "]" : "}");
        }
        return open.Append("1").Append(close).ToString();
    }

    private static byte[] RawBytes(Random random)
    {
        var bytes = new byte[random.Next(0, 256)];
        random.NextBytes(bytes);
        return bytes;
    }

    private static T Pick<T>(Random random, IReadOnlyList<T> items) => items[random.Next(items.Count)];
}
