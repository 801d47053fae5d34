using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Server;

/// <summary>The server as an operator runs it: huge bodies cost nothing, one log line per request, start-up failures in one line.</summary>
public sealed class OpenAiServerOperationTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public async Task FourConcurrentHugeBodiesAre413sAndCostNoMemory()
    {
        using var server = ServerProcess.Start(_temp.Sub("cache"), ("Logging:LogLevel:Default", "Warning"));
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) };
        (await http.GetAsync(new Uri(server.BaseUri, "health"))).EnsureSuccessStatusCode();
        long idle = server.ResidentBytes;
        // 26 MB: a conversation of about 6 million tokens, in a valid body.
        var body = Encoding.UTF8.GetBytes($$"""{"model": "tiny", "messages": [{"role": "user", "content": "{{new string('a', 26_000_000)}}"}]}""");
        var answers = await Task.WhenAll(Enumerable.Range(0, 4).Select(async _ =>
        {
            using var content = new ByteArrayContent(body);
            content.Headers.ContentType = new("application/json");
            using var response = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), content);
            return (response.StatusCode, Body: await response.Content.ReadAsStringAsync());
        }));
        long after = server.ResidentBytes;
        Assert.All(answers, a => Assert.Equal(HttpStatusCode.RequestEntityTooLarge, a.StatusCode));
        Assert.All(answers, a => Assert.Contains("request_too_large", a.Body));
        Assert.True(after - idle < 200L << 20, $"resident memory grew by {(after - idle) >> 20} MiB (idle {idle >> 20} MiB)");
    }

    [Fact]
    public async Task EachRequestIsOneLogLineAndOnlyFaultsHaveStackTraces()
    {
        using var server = ServerProcess.Start(_temp.Sub("cache"), ("Logging:LogLevel:Default", "Information"), ("Server:MaxRequestBodyBytes", "4096"));
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) };
        var ok = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"),
            new StringContent("""{"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "Hello"}]}""", Encoding.UTF8, "application/json"));
        ok.EnsureSuccessStatusCode();
        var tooLarge = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), new StringContent(new string(' ', 8192) + "{}", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, tooLarge.StatusCode);
        var bad = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), new StringContent("{", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await http.GetAsync(new Uri(server.BaseUri, "v2/nothing"))).StatusCode);

        string log = "";
        for (var clock = Stopwatch.StartNew(); clock.Elapsed < TimeSpan.FromSeconds(10); await Task.Delay(50))
            if ((log = server.Log).Contains("/v2/nothing", StringComparison.Ordinal)) break;
        // Console logging writes a category line and a message line per entry; start-up says where it listens.
        var entries = log.Split('\n').Where(l => l.StartsWith("info:", StringComparison.Ordinal) || l.StartsWith("warn:", StringComparison.Ordinal) || l.StartsWith("fail:", StringComparison.Ordinal))
            .Where(l => !l.Contains("Microsoft.Hosting.Lifetime", StringComparison.Ordinal)).ToList();
        Assert.True(entries.Count == 4 && entries.All(e => e.Contains("OrtKvTier.Server.Requests", StringComparison.Ordinal)), $"expected 4 entries for 4 requests:\n{log}");
        Assert.Contains("POST /v1/chat/completions 200", log);
        Assert.Contains("prompt tokens", log);
        Assert.Contains("POST /v1/chat/completions 413", log);
        Assert.Contains("GET /v2/nothing 404", log);
        Assert.DoesNotContain("   at ", log);
    }

    [Fact]
    public void AMissingModelFolderOrABusyPortEndsInOneLineAndANonZeroExit()
    {
        var (code, output) = RunServer("--OrtKvTier:ModelFolder=" + _temp.Sub("no-such-model"), "--urls", $"http://127.0.0.1:{LoopbackPort.Free()}");
        Assert.NotEqual(0, code);
        Assert.NotEqual(134, code);
        Assert.Contains("ModelFolder", output);
        Assert.DoesNotContain("   at ", output);

        using var busy = new TcpListener(IPAddress.Loopback, 0);
        busy.Start();
        (code, output) = RunServer("--urls", $"http://127.0.0.1:{((IPEndPoint)busy.LocalEndpoint).Port}", "--OrtKvTier:CacheDirectory=" + _temp.Sub("cache"));
        Assert.NotEqual(0, code);
        Assert.NotEqual(134, code);
        Assert.Contains("--urls", output);
        Assert.DoesNotContain("   at ", output);
    }

    [Fact]
    public async Task KeysThatDifferOnlyInLetterCaseAreTwoTenantsAndKeysMayHoldAnyCharacter()
    {
        using var server = ServerProcess.Start(_temp.Sub("cache"), ("Logging:LogLevel:Default", "Warning"),
            ("Server:ApiKeys:0:Key", "sk-Team:A"), ("Server:ApiKeys:0:Tenant", "upper"), ("Server:ApiKeys:1:Key", "sk-team:a"), ("Server:ApiKeys:1:Tenant", "lower"));
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(1) };
        string prompt = "Tenant case test. " + string.Join(' ', Enumerable.Repeat("The manual says the reset button is on the back.", 4));
        async Task<int?> Cached(string key)
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, new Uri(server.BaseUri, "v1/chat/completions"))
            {
                Content = new StringContent(System.Text.Json.JsonSerializer.Serialize(new { model = "tiny", max_tokens = 2, messages = new[] { new { role = "user", content = prompt } } }), Encoding.UTF8, "application/json"),
            };
            request.Headers.Authorization = new("Bearer", key);
            using var response = await http.SendAsync(request);
            if (response.StatusCode != HttpStatusCode.OK) return null;
            return System.Text.Json.JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32();
        }
        Assert.Equal(0, await Cached("sk-Team:A"));
        Assert.Equal(0, await Cached("sk-team:a"));   // the other tenant: its own entries only
        Assert.True(await Cached("sk-Team:A") > 16);
        Assert.Null(await Cached("SK-TEAM:A"));        // a third spelling is no key at all: 401
    }

    [Theory]
    [InlineData("holds 'key-alice' as a name", "--Server:ApiKeys:key-alice=alice")]
    [InlineData("repeats the key of an earlier entry", "--Server:ApiKeys:0:Key=k", "--Server:ApiKeys:0:Tenant=a", "--Server:ApiKeys:1:Key=k", "--Server:ApiKeys:1:Tenant=b")]
    [InlineData("needs a Key and a Tenant", "--Server:ApiKeys:0:Key=k")]
    public void KeysThatCouldMergeOrOpenTheServerStopItAtStartUp(string message, params string[] settings)
    {
        var (code, output) = RunServer([.. settings, "--urls", $"http://127.0.0.1:{LoopbackPort.Free()}", "--OrtKvTier:CacheDirectory=" + _temp.Sub("cache")]);
        Assert.Equal(1, code);
        Assert.Contains(message, output);
        Assert.DoesNotContain("   at ", output);
    }

    private static (int Code, string Output) RunServer(params string[] args)
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = TestPaths.RepoRoot };
        info.ArgumentList.Add(ChildProcess.ServerDll);
        foreach (var a in args) info.ArgumentList.Add(a);
        info.ArgumentList.Add("--Logging:LogLevel:Default=Warning");
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(60_000))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException("the server did not exit within 60 s");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }

    public void Dispose() => _temp.Dispose();
}
