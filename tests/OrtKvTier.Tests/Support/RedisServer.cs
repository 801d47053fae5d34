using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace OrtKvTier.Tests.Support;

/// <summary>
/// A real Redis server for the remote-tier tests: the one <c>.ci/run</c> starts (<c>ORTKV_TEST_REDIS</c>),
/// or a private <c>redis-server</c> child on a free loopback port (needed by tests that kill it).
/// </summary>
internal sealed class RedisServer : IDisposable
{
    private readonly Process? _process;

    private RedisServer(string endpoint, Process? process)
    {
        Endpoint = endpoint;
        _process = process;
    }

    public string Endpoint { get; }

    public static string? Binary { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
        .Select(d => Path.Combine(d, "redis-server")).FirstOrDefault(File.Exists);

    /// <summary>Why no server can be had here, or null.</summary>
    public static string? Unavailable(bool ownProcess) =>
        Binary is not null || (!ownProcess && Environment.GetEnvironmentVariable("ORTKV_TEST_REDIS") is { Length: > 0 }) ? null
        : "No Redis server: install redis-server (apt-get install redis-server) or run through .ci/run, which starts one" +
          (ownProcess ? " (this test kills its own server, so it needs the redis-server binary)." : " (or set ORTKV_TEST_REDIS=host:port).");

    /// <summary>The run's shared server if there is one, else a private one.</summary>
    /// <summary>
    /// A client of the test's own for looking at or tampering with what the tier stored (one server or a cluster's
    /// nodes, comma-separated). Patient: a 2-core machine running the suite's test classes in parallel has taken over
    /// 5 s (the client's default) to answer the handshake.
    /// </summary>
    public static StackExchange.Redis.ConnectionMultiplexer Client(string connection)
    {
        var options = StackExchange.Redis.ConfigurationOptions.Parse(connection);
        options.ConnectTimeout = options.SyncTimeout = 30_000;
        options.ConnectRetry = 3;
        return StackExchange.Redis.ConnectionMultiplexer.Connect(options);
    }

    public static RedisServer Shared() =>
        Environment.GetEnvironmentVariable("ORTKV_TEST_REDIS") is { Length: > 0 } endpoint ? Ready(new RedisServer(endpoint, null)) : StartOwn();

    /// <summary>A private server this test may kill.</summary>
    public static RedisServer StartOwn()
    {
        var binary = Binary ?? throw new InvalidOperationException(Unavailable(true));
        int port = LoopbackPort.Free();
        var info = new ProcessStartInfo(binary) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "--port", port.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no" }) info.ArgumentList.Add(a);
        var process = Process.Start(info)!;
        process.OutputDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        return Ready(new RedisServer($"127.0.0.1:{port}", process));
    }

    /// <summary>Sends a raw command (inline protocol) and returns the first reply line.</summary>
    public string Command(string command)
    {
        var (host, port) = Split();
        using var client = new TcpClient(host, port);
        var stream = client.GetStream();
        stream.Write(Encoding.ASCII.GetBytes(command + "\r\n"));
        var buffer = new byte[4096];
        int n = stream.Read(buffer);
        return Encoding.ASCII.GetString(buffer, 0, n).Split("\r\n")[0];
    }

    public void Kill()
    {
        if (_process is null) throw new InvalidOperationException("Only a private server can be killed.");
        _process.Kill();
        _process.WaitForExit();
    }

    public void Dispose()
    {
        if (_process is { HasExited: false }) Kill();
        _process?.Dispose();
    }

    private (string Host, int Port) Split()
    {
        var parts = Endpoint.Split(':');
        return (parts[0], int.Parse(parts[1]));
    }

    private static RedisServer Ready(RedisServer server)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                if (server.Command("PING") == "+PONG") return server;
            }
            catch (SocketException) when (clock.Elapsed < TimeSpan.FromSeconds(10))
            {
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException($"Redis at {server.Endpoint} did not answer PING.");
            Thread.Sleep(50);
        }
    }
}

/// <summary>A fact that needs a Redis server; skipped, saying how to get one, where none can be had.</summary>
internal sealed class RedisFactAttribute : FactAttribute
{
    public RedisFactAttribute(bool ownServer = false)
    {
        if (RedisServer.Unavailable(ownServer) is { } reason) Skip = reason;
    }
}

/// <summary>A theory that needs a Redis server; skipped with the reason when none can be had.</summary>
internal sealed class RedisTheoryAttribute : TheoryAttribute
{
    public RedisTheoryAttribute()
    {
        if (RedisServer.Unavailable(false) is { } reason) Skip = reason;
    }
}
