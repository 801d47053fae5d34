using System.Diagnostics;

namespace OrtKvTier.Tests.Support;

/// <summary>
/// A real three-node Redis Cluster on loopback ports (no replicas): the one <c>.ci/run</c> starts
/// (<c>ORTKV_TEST_REDIS_CLUSTER</c>, comma-separated nodes), or private <c>redis-server --cluster-enabled yes</c>
/// children joined with <c>redis-cli --cluster create</c> (needed by tests that kill a node).
/// </summary>
internal sealed class RedisCluster : IDisposable
{
    private readonly List<Process> _processes;
    private readonly string? _directory;

    private RedisCluster(string[] nodes, List<Process> processes, string? directory)
    {
        Nodes = nodes;
        _processes = processes;
        _directory = directory;
    }

    /// <summary>The nodes, <c>host:port</c> each.</summary>
    public string[] Nodes { get; }

    /// <summary>The connection string for a client: every node, comma-separated.</summary>
    public string Connection => string.Join(',', Nodes);

    public static string? CliBinary { get; } = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':')
        .Select(d => Path.Combine(d, "redis-cli")).FirstOrDefault(File.Exists);

    /// <summary>Why no cluster can be had here, or null.</summary>
    public static string? Unavailable(bool own) =>
        (RedisServer.Binary is not null && CliBinary is not null) || (!own && Environment.GetEnvironmentVariable("ORTKV_TEST_REDIS_CLUSTER") is { Length: > 0 }) ? null
        : "No Redis Cluster: install redis-server and redis-cli (apt-get install redis-server) or run through .ci/run, which starts a three-node cluster" +
          (own ? " (this test kills a node, so it needs the binaries)." : " (or set ORTKV_TEST_REDIS_CLUSTER=host:port,host:port,host:port).");

    /// <summary>The run's shared cluster if there is one, else a private one.</summary>
    public static RedisCluster Shared() =>
        Environment.GetEnvironmentVariable("ORTKV_TEST_REDIS_CLUSTER") is { Length: > 0 } nodes ? new RedisCluster(nodes.Split(','), [], null) : StartOwn();

    /// <summary>A private cluster of three nodes this test may kill (a second attempt on fresh ports if the first fails to start).</summary>
    public static RedisCluster StartOwn()
    {
        try
        {
            return TryStartOwn();
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            return TryStartOwn();
        }
    }

    private static RedisCluster TryStartOwn()
    {
        var directory = Path.Combine(Path.GetTempPath(), "ortkv-cluster-" + Guid.NewGuid().ToString("N")[..8]);
        var processes = new List<Process>();
        var nodes = new List<string>();
        var output = new List<System.Text.StringBuilder>();
        try
        {
            for (int n = 0; n < 3; n++)
            {
                int port = LoopbackPort.Free();
                var nodeDir = Path.Combine(directory, n.ToString());
                Directory.CreateDirectory(nodeDir);
                var info = new ProcessStartInfo(RedisServer.Binary!) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = nodeDir };
                // The bus port is given: the default (port + 10000) does not exist above port 55535.
                foreach (var a in new[] { "--port", port.ToString(), "--cluster-port", LoopbackPort.Free().ToString(), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                             "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no" })
                    info.ArgumentList.Add(a);
                var process = Process.Start(info)!;
                var log = new System.Text.StringBuilder();
                process.OutputDataReceived += (_, line) => { lock (log) log.AppendLine(line.Data); };
                process.BeginOutputReadLine();
                processes.Add(process);
                output.Add(log);
                nodes.Add($"127.0.0.1:{port}");
            }
            foreach (var node in nodes) WaitFor(node, "PING", "PONG");
            Cli(["--cluster", "create", .. nodes, "--cluster-replicas", "0", "--cluster-yes"]);
            foreach (var node in nodes) WaitFor(node, "CLUSTER INFO", "cluster_state:ok");
            return new RedisCluster([.. nodes], processes, directory);
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            foreach (var process in processes.Where(p => !p.HasExited)) process.Kill();
            var died = processes.Select((p, n) => (p, n)).Where(x => x.p.HasExited).Select(x => $"node {nodes[x.n]}: {output[x.n]}");
            throw new InvalidOperationException($"The private Redis Cluster did not start ({e.Message}). {string.Join(" ", died)}", e);
        }
    }

    /// <summary>Keys each node holds (DBSIZE), in <see cref="Nodes"/> order.</summary>
    public long[] KeysPerNode() => [.. Nodes.Select(node => long.Parse(Cli(["-h", Host(node), "-p", Port(node), "DBSIZE"]).Trim()))];

    /// <summary>Kills node <paramref name="index"/> (SIGKILL).</summary>
    public void Kill(int index)
    {
        if (_processes.Count == 0) throw new InvalidOperationException("Only a private cluster's nodes can be killed.");
        _processes[index].Kill();
        _processes[index].WaitForExit();
    }

    public void Dispose()
    {
        foreach (var process in _processes)
        {
            if (!process.HasExited) process.Kill();
            process.Dispose();
        }
        if (_directory is not null)
            try { Directory.Delete(_directory, recursive: true); } catch (IOException) { }
    }

    private static string Host(string node) => node.Split(':')[0];

    private static string Port(string node) => node.Split(':')[1];

    private static void WaitFor(string node, string command, string expected)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                if (Cli(["-h", Host(node), "-p", Port(node), .. command.Split(' ')]).Contains(expected, StringComparison.Ordinal)) return;
            }
            catch (InvalidOperationException) when (clock.Elapsed < TimeSpan.FromSeconds(20))
            {
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(20)) throw new TimeoutException($"Redis node {node} did not answer {command} with {expected}.");
            Thread.Sleep(100);
        }
    }

    private static string Cli(string[] args)
    {
        var info = new ProcessStartInfo(CliBinary ?? throw new InvalidOperationException(Unavailable(true))) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) info.ArgumentList.Add(a);
        using var process = Process.Start(info)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"redis-cli {string.Join(' ', args)} exited {process.ExitCode}: {error}");
        return output.Result;
    }

}

/// <summary>A fact that needs a Redis Cluster; skipped, saying how to get one, where none can be had.</summary>
internal sealed class RedisClusterFactAttribute : FactAttribute
{
    public RedisClusterFactAttribute(bool own = false)
    {
        if (RedisCluster.Unavailable(own) is { } reason) Skip = reason;
    }
}
