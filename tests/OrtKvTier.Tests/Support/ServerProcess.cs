using System.Diagnostics;

namespace OrtKvTier.Tests.Support;

/// <summary>The OpenAI-compatible server sample as a real child process on a free loopback port.</summary>
internal sealed class ServerProcess : IDisposable
{
    private readonly Process _process;
    private readonly System.Text.StringBuilder _log = new();

    private ServerProcess(Process process, Uri baseUri)
    {
        _process = process;
        BaseUri = baseUri;
    }

    /// <summary>The server's process id.</summary>
    public int Pid => _process.Id;

    /// <summary>Resident memory of the server process, in bytes (Linux).</summary>
    public long ResidentBytes
    {
        get
        {
            var line = File.ReadLines($"/proc/{Pid}/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
            return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
    }

    /// <summary>http://127.0.0.1:PORT/</summary>
    public Uri BaseUri { get; }

    /// <summary>The OpenAI endpoint: <see cref="BaseUri"/> + <c>v1</c>.</summary>
    public Uri OpenAiEndpoint => new(BaseUri, "v1");

    public string Log
    {
        get { lock (_log) return _log.ToString(); }
    }

    /// <summary>Starts the server with <paramref name="settings"/> (configuration keys such as <c>Server:MaxQueued</c>) and waits for /health.</summary>
    public static ServerProcess Start(string cacheDirectory, params (string Key, string Value)[] settings)
    {
        int port = LoopbackPort.Free();
        var info = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = TestPaths.RepoRoot };
        foreach (var a in new[] { ChildProcess.ServerDll, "--urls", $"http://127.0.0.1:{port}", $"--OrtKvTier:ModelFolder={TestPaths.Tiny}",
                     $"--OrtKvTier:CacheDirectory={cacheDirectory}", "--OrtKvTier:ChunkTokens=16", "--OrtKvTier:DiskCacheBytes=16777216",
                     // The tests count cached tokens: every prefix found is restored, however busy the machine makes the costs look.
                     "--OrtKvTier:AlwaysRestore=true", "--Logging:LogLevel:Default=Warning" })
            info.ArgumentList.Add(a);
        foreach (var (key, value) in settings) info.ArgumentList.Add($"--{key}={value}");
        var process = Process.Start(info)!;
        var server = new ServerProcess(process, new Uri($"http://127.0.0.1:{port}/"));
        process.OutputDataReceived += (_, e) => { lock (server._log) server._log.AppendLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { lock (server._log) server._log.AppendLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        for (var clock = Stopwatch.StartNew(); clock.Elapsed < TimeSpan.FromSeconds(60); Thread.Sleep(100))
        {
            if (process.HasExited) throw new InvalidOperationException($"The server exited with {process.ExitCode}: {server.Log}");
            try
            {
                if (http.GetAsync(new Uri(server.BaseUri, "health")).Result.IsSuccessStatusCode) return server;
            }
            catch (AggregateException) { }
        }
        server.Dispose();
        throw new TimeoutException($"The server did not answer /health within 60 s: {server.Log}");
    }

    public void Dispose()
    {
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        _process.WaitForExit();
        _process.Dispose();
    }
}
