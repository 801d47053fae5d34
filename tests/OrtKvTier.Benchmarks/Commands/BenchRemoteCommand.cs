using System.Diagnostics;
using System.Globalization;
using StackExchange.Redis;
using System.Net.Sockets;
using OrtKvTier.Cache;
using OrtKvTier.Tiers.Remote;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench remote</c>: restore GB/s of a prefix from a Redis-compatible server against the local disk
/// tier (each from a fresh cache with an empty host tier), and time to first token with a remote hit
/// against no cache, on the same folder and prompts in one run.
/// </summary>
internal static class BenchRemoteCommand
{
    public const string Usage = "  remote [--model DIR] [--remote redis://HOST:PORT|HOST:PORT,HOST:PORT,...] [--prefix-tokens N] [--reps R] [--sockets N] [--no-encrypt] [--idle S] [--json]\n" +
        "    (no --remote: starts redis-server on a free loopback port; --sockets: RemoteTierOptions.SocketsPerServer, 0 = the client's connection;\n" +
        "     --idle S: also time the first fetch after S seconds idle)";

    public static int Run(CommandLine cl)
    {
        var folder = BenchModel.Resolve(cl.String("model"));
        var remoteText = cl.String("remote");
        int prefix = cl.Int("prefix-tokens", 2048, PrefixCacheOptions.DefaultChunkTokens);
        prefix -= prefix % PrefixCacheOptions.DefaultChunkTokens;
        int reps = cl.Int("reps", 3, 1);
        int sockets = cl.Int("sockets", new RemoteTierOptions { Connection = "localhost" }.SocketsPerServer, 0);
        int idleSeconds = cl.Int("idle", 0, 0);
        bool encrypt = !cl.Flag("no-encrypt");
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        using var server = remoteText is null ? LocalServer.Start() : null;
        var connection = remoteText ?? server!.Endpoint;
        using var model = KvModel.Load(folder);
        using var tokenizer = new ModelTokenizer(model.Folder);
        var search = SearchOptions.FromConfig(model) with { DoSample = false };
        var prefixTokens = BenchModel.Tokens(prefix, 3, model.VocabSize);
        int[] Prompt(int rep) => [.. prefixTokens, .. BenchModel.Tokens(QuestionTokens, 2000 + rep, model.VocabSize)];
        var ns = "bench-" + Guid.NewGuid().ToString("N")[..8];
        var dir = Path.Combine(Path.GetTempPath(), "ortkv-bench-remote-" + ns);
        // One key for the bench's "fleet": every cache and tier below shares entries through it.
        var fleetKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);
        var remoteOptions = new RemoteTierOptions { Connection = connection, Namespace = ns, Admission = RemoteAdmission.Always, OperationTimeout = TimeSpan.FromSeconds(2), SecretKey = fleetKey, SocketsPerServer = sockets, Encrypt = encrypt };
        var diskOptions = new PrefixCacheOptions { Directory = dir, DiskCapacityBytes = 4L * prefix * model.Layout.BytesPerToken + (64L << 20), SecretKey = fleetKey, AlwaysRestore = true };
        // A server's steady state: one cache whose connections are open and whose host memory is recycled; its host tier
        // is emptied before every measured restore, so every chunk comes from the server.
        var remoteTier = RemoteTier.For(model, diskOptions.ChunkTokens, remoteOptions, StderrLogger.Instance);
        remoteTier.Connect();
        using var remoteCache = PrefixCache.Open(model, new PrefixCacheOptions { ExtraTiers = [remoteTier], SecretKey = fleetKey, AlwaysRestore = true });
        PrefixCache RemoteOnly()
        {
            remoteCache.Clear();
            return remoteCache;
        }
        try
        {
            System.Console.Error.WriteLine($"{model.Folder}, {prefix}-token prefix, server {connection}");
            new TextGenerator(model, tokenizer).Generate(BenchModel.Tokens(64, 9, model.VocabSize), 1, search); // warm-up
            using (var fill = PrefixCache.Open(model, diskOptions with { ExtraTiers = [RemoteTier.For(model, diskOptions.ChunkTokens, remoteOptions)] }))
            {
                new TextGenerator(model, tokenizer, fill).Generate(Prompt(-1), 1, search);
                fill.Flush();
                var remote = (RemoteTier)fill.Tiers[^1];
                System.Console.Error.WriteLine($"remote tier after the fill: {remote.GetStats().Writes} chunks written, {remote.Failures} failures");
            }
            long bytes = (long)prefix * model.Layout.BytesPerToken;
            string[] serverKeys = [.. remoteCache.Chain.Keys(prefixTokens).Select(remoteTier.Key)];
            using var plain = PlainClient.Connect(connection, Math.Max(1, sockets));
            // Steady state, as a server serving requests: both paths run a few times untimed first (code optimized, buffers in use).
            for (int warm = 0; warm < WarmUps; warm++)
            {
                RestoreMs(model, RemoteOnly(), Prompt(-1));
                plain.FetchMs(serverKeys);
            }
            // Pairs, one right after the other, so both see the same load; the ratio is taken per pair.
            var pairs = new List<(double RemoteMs, double PlainMs, double RemoteCpuMs, double PlainCpuMs)>();
            for (int pair = 0; pair < FetchPairsPerRep * reps; pair++)
            {
                var (remoteOne, remoteOneCpu) = WithCpu(() => RestoreMs(model, RemoteOnly(), Prompt(-1)));
                var (plainOne, plainOneCpu) = WithCpu(() => plain.FetchMs(serverKeys));
                pairs.Add((remoteOne, plainOne, remoteOneCpu, plainOneCpu));
            }
            // What a restore adds to the plain fetch, each alone on one thread: opening the values, placing them in the past.
            var chunkKeys = remoteCache.Chain.Keys(prefixTokens);
            var opened = new byte[remoteCache.ChunkBytes];
            var openMs = Repeat(reps, _ => BenchModel.Time(() =>
            {
                for (int i = 0; i < chunkKeys.Length; i++)
                {
                    var chunkTokens = prefixTokens.AsSpan(i * diskOptions.ChunkTokens, diskOptions.ChunkTokens);
                    if (RemoteEntry.Decode(plain.Kept(serverKeys[i]), remoteCache.Identity, remoteCache.Secret, chunkKeys[i], chunkTokens, opened) is { } failure)
                        throw new InvalidOperationException($"The value of chunk {i} does not open: {failure}");
                }
            }).TotalMilliseconds);
            RestoreMs(model, RemoteOnly(), Prompt(-1));
            var placeMs = Repeat(reps, _ => RestoreMs(model, remoteCache, Prompt(-1))); // host memory hits: placement alone
            var diskMs = Repeat(reps, _ => { using var c = PrefixCache.Open(model, diskOptions); return RestoreMs(model, c, Prompt(-1)); });
            var noCache = Repeat(reps, r => new TextGenerator(model, tokenizer).Generate(Prompt(r), 8, search).TtftMs);
            var remoteHit = new List<double>();
            var diskHit = new List<double>();
            var remoteLookups = new List<double>();
            for (int rep = -1; rep < reps; rep++) // rep -1: untimed, after the model runs above
            {
                var remote = new TextGenerator(model, tokenizer, RemoteOnly()).Generate(Prompt(rep), 8, search);
                double disk;
                using (var c = PrefixCache.Open(model, diskOptions)) disk = new TextGenerator(model, tokenizer, c).Generate(Prompt(rep), 8, search).TtftMs;
                if (rep < 0) continue;
                remoteHit.Add(remote.TtftMs);
                remoteLookups.Add(remote.Restore.LookupMs + remote.Restore.RestoreMs);
                diskHit.Add(disk);
            }
            // The plain client in the remote hit's situation (right after a generation), for comparison with its fetch.
            var plainAfterGeneration = Repeat(reps, rep =>
            {
                using (var c = PrefixCache.Open(model, diskOptions)) new TextGenerator(model, tokenizer, c).Generate(Prompt(rep), 8, search);
                return plain.FetchMs(serverKeys);
            });
            // What an idle spell costs the first fetch (on this VM: buffers the kernel freed are handed back to the host).
            (double Plain, double Remote)? afterIdle = null;
            if (idleSeconds > 0)
            {
                Thread.Sleep(TimeSpan.FromSeconds(idleSeconds));
                double plainAfterIdle = plain.FetchMs(serverKeys);
                Thread.Sleep(TimeSpan.FromSeconds(idleSeconds));
                afterIdle = (plainAfterIdle, RestoreMs(model, RemoteOnly(), Prompt(-1)));
            }

            var remoteMs = pairs.Select(p => p.RemoteMs).ToList();
            var plainMs = pairs.Select(p => p.PlainMs).ToList();
            double pairRatio = BenchModel.Median(pairs.Select(p => p.PlainMs / p.RemoteMs));
            double remoteGbps = bytes / BenchModel.Median(remoteMs) / 1e6, diskGbps = bytes / BenchModel.Median(diskMs) / 1e6, plainGbps = bytes / BenchModel.Median(plainMs) / 1e6;
            double? redisBenchmark = connection.Contains(',') ? null : RedisBenchmarkGbps(connection, (int)(bytes / serverKeys.Length));
            double noCacheTtft = BenchModel.Median(noCache), remoteTtft = BenchModel.Median(remoteHit), diskTtft = BenchModel.Median(diskHit), remoteLookup = BenchModel.Median(remoteLookups);
            double remoteCpu = BenchModel.Median(pairs.Select(p => p.RemoteCpuMs)), plainCpu = BenchModel.Median(pairs.Select(p => p.PlainCpuMs));
            double open = BenchModel.Median(openMs), place = BenchModel.Median(placeMs), plainAfterGen = BenchModel.Median(plainAfterGeneration);
            if (json)
                JsonOutput.Write(w =>
                {
                    w.WriteString("model", model.Folder);
                    w.WriteNumber("prefix_tokens", prefix);
                    w.WriteNumber("restore_bytes", bytes);
                    w.WriteBoolean("values_encrypted", encrypt);
                    w.WriteNumber("remote_restore_gbps", Math.Round(remoteGbps, 3));
                    w.WriteNumber("disk_restore_gbps", Math.Round(diskGbps, 3));
                    w.WriteNumber("plain_client_gbps", Math.Round(plainGbps, 3));
                    w.WriteNumber("fetch_pairs", pairs.Count);
                    w.WriteNumber("remote_over_plain_client", Math.Round(pairRatio, 2));
                    w.WriteNumber("remote_client_cpu_ms", Math.Round(remoteCpu, 1));
                    w.WriteNumber("plain_client_cpu_ms", Math.Round(plainCpu, 1));
                    w.WriteNumber("open_values_one_thread_ms", Math.Round(open, 1));
                    w.WriteNumber("place_from_host_memory_ms", Math.Round(place, 1));
                    if (afterIdle is { } idle)
                    {
                        w.WriteNumber("idle_seconds", idleSeconds);
                        w.WriteNumber("plain_client_ms_after_idle", Math.Round(idle.Plain, 1));
                        w.WriteNumber("remote_restore_ms_after_idle", Math.Round(idle.Remote, 1));
                    }
                    if (redisBenchmark is { } rb) w.WriteNumber("redis_benchmark_get_gbps", Math.Round(rb, 3));
                    w.WriteNumber("disk_hit_ttft_ms", Math.Round(diskTtft, 2));
                    w.WriteNumber("remote_hit_over_disk_hit", Math.Round(remoteTtft / diskTtft, 2));
                    w.WriteNumber("no_cache_ttft_ms", Math.Round(noCacheTtft, 2));
                    w.WriteNumber("remote_hit_ttft_ms", Math.Round(remoteTtft, 2));
                    w.WriteNumber("remote_hit_lookup_ms", Math.Round(remoteLookup, 2));
                    w.WriteNumber("plain_client_ms_after_generation", Math.Round(plainAfterGen, 1));
                    w.WriteNumber("no_cache_over_remote_hit", Math.Round(noCacheTtft / remoteTtft, 2));
                });
            else
            {
                System.Console.WriteLine($"restore {bytes / 1e6:F1} MB: remote {BenchModel.Median(remoteMs):F1} ms = {remoteGbps:F2} GB/s, a plain client fetching the same values {plainGbps:F2} GB/s " +
                    $"(remote / plain {pairRatio:F2}x, median of {pairs.Count} pairs); local disk {diskGbps:F2} GB/s (median of {reps})");
                System.Console.WriteLine($"client CPU per fetch: remote {remoteCpu:F0} ms, plain {plainCpu:F0} ms; " +
                    $"what a restore adds, alone: opening (verify{(encrypt ? ", decrypt" : "")}) the values on one thread {open:F1} ms, placing them in the past {place:F1} ms");
                if (afterIdle is { } idle) System.Console.WriteLine($"first fetch after {idleSeconds} s idle: plain client {idle.Plain:F1} ms, remote restore {idle.Remote:F1} ms");
                if (redisBenchmark is { } rb) System.Console.WriteLine($"redis-benchmark GET of values that size, 4 connections: {rb:F2} GB/s");
                System.Console.WriteLine($"TTFT: no cache {noCacheTtft:F1} ms, remote hit {remoteTtft:F1} ms ({noCacheTtft / remoteTtft:F1}x), disk hit {diskTtft:F1} ms (remote / disk {remoteTtft / diskTtft:F2}x)");
                System.Console.WriteLine($"right after a generation: the remote hit's fetch took {remoteLookup:F1} ms, a plain client's {plainAfterGen:F1} ms (medians of {reps})");
            }
        }
        finally
        {
            BenchModel.TryDelete(dir);
        }
        return 0;
    }

    private static double RestoreMs(KvModel model, PrefixCache cache, int[] prompt)
    {
        using var binding = model.Session.CreateIoBinding();
        using var restored = new PrefixCacheHook(cache, model.Layout).Restore(prompt, binding);
        if (restored.Tokens != prompt.Length - QuestionTokens)
            throw new InvalidOperationException($"Restored {restored.Tokens} of {prompt.Length} prompt tokens ({string.Join(", ", restored.Report.TokensByTier)}); is the server reachable?");
        return restored.Report.LookupMs + restored.Report.RestoreMs;
    }

    /// <summary>Untimed restores and fetches before the measured ones.</summary>
    private const int WarmUps = 5;

    /// <summary>Remote restore / plain fetch pairs per repetition (each takes tens of milliseconds).</summary>
    private const int FetchPairsPerRep = 10;

    /// <summary>The result of <paramref name="measure"/> and the CPU time this process spent meanwhile (every thread), in ms.</summary>
    private static (double Result, double CpuMs) WithCpu(Func<double> measure)
    {
        var before = Process.GetCurrentProcess().TotalProcessorTime;
        double result = measure();
        return (result, (Process.GetCurrentProcess().TotalProcessorTime - before).TotalMilliseconds);
    }

    /// <summary>Each prompt is the prefix (whole chunks) plus a question of this many tokens: everything but the question is restored.</summary>
    private const int QuestionTokens = 16;

    private static List<double> Repeat(int reps, Func<int, double> measure) => Enumerable.Range(0, reps).Select(measure).ToList();

    /// <summary>
    /// The limit to compare with: the same values fetched the fastest way a client can (pipelined GETs over the same
    /// number of plain sockets, read in parallel), each received into memory of its own: no verification, no
    /// decryption, no placement.
    /// </summary>
    private sealed class PlainClient(string endpoint, int sockets) : IDisposable
    {
        private readonly ConnectionMultiplexer _topology = ConnectionMultiplexer.Connect(RemoteTierOptions.ConfigurationFor(endpoint));
        private readonly WireFetcher _wire = new(ConfigurationOptions.Parse(RemoteTierOptions.ConfigurationFor(endpoint)), sockets, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5), 1L << 30);

        public static PlainClient Connect(string endpoint, int sockets) => new(endpoint, sockets);

        /// <summary>Where each value is kept (allocated on first use, reused after): a client keeps what it fetches, as a restore does.</summary>
        private readonly Dictionary<string, byte[]> _kept = [];

        /// <summary>The value of <paramref name="key"/> as last fetched.</summary>
        public byte[] Kept(string key) => _kept[key];

        public double FetchMs(string[] keys)
        {
            var db = _topology.GetDatabase();
            foreach (var key in keys)
                if (!_kept.ContainsKey(key)) _kept[key] = new byte[db.StringLength(key)];
            long bytes = 0;
            var clock = Stopwatch.StartNew();
            _wire.Fetch(keys, i => _topology.GetServer((RedisKey)keys[i]).EndPoint, i => new ValueTarget(0, _kept[keys[i]]),
                (i, value, inPlace) => Interlocked.Add(ref bytes, inPlace ? _kept[keys[i]].Length : value?.Length ?? 0));
            double ms = clock.Elapsed.TotalMilliseconds;
            if (bytes == 0) throw new InvalidOperationException("The plain client fetched nothing: are the values on the server?");
            return ms;
        }

        public void Dispose()
        {
            _wire.Dispose();
            _topology.Dispose();
        }
    }

    /// <summary><c>redis-benchmark</c>'s GET rate for values of <paramref name="valueBytes"/> over 4 connections, in GB/s; null when it is not installed.</summary>
    private static double? RedisBenchmarkGbps(string endpoint, int valueBytes)
    {
        var (host, port) = (endpoint.Split(':')[0], endpoint.Split(':')[1]);
        try
        {
            var info = new ProcessStartInfo("redis-benchmark") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "-h", host, "-p", port, "-t", "set,get", "-n", "2000", "-d", valueBytes.ToString(CultureInfo.InvariantCulture), "-c", "4", "-P", "4", "-q" })
                info.ArgumentList.Add(a);
            using var process = Process.Start(info)!;
            var output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            var line = output.Split('\r', '\n').LastOrDefault(l => l.TrimStart().StartsWith("GET:", StringComparison.Ordinal));
            var rate = line?.Split(' ', StringSplitOptions.RemoveEmptyEntries).ElementAtOrDefault(1);
            return double.TryParse(rate, NumberStyles.Float, CultureInfo.InvariantCulture, out var rps) ? rps * valueBytes / 1e9 : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }

    /// <summary>A private redis-server on a free loopback port for the bench's duration.</summary>
    internal sealed class LocalServer : IDisposable
    {
        private readonly Process _process;
        private LocalServer(Process process, string endpoint) => (_process, Endpoint) = (process, endpoint);
        public string Endpoint { get; }

        public static LocalServer Start()
        {
            int port = BenchModel.FreePort();
            var info = new ProcessStartInfo("redis-server") { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var a in new[] { "--port", port.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no" }) info.ArgumentList.Add(a);
            Process process;
            try
            {
                process = Process.Start(info)!;
            }
            catch (System.ComponentModel.Win32Exception)
            {
                throw new UsageException("remote needs --remote redis://HOST:PORT or redis-server on the PATH (apt-get install redis-server).");
            }
            for (var clock = Stopwatch.StartNew(); clock.Elapsed < TimeSpan.FromSeconds(10); Thread.Sleep(50))
                try
                {
                    using var probe = new TcpClient("127.0.0.1", port);
                    return new LocalServer(process, $"127.0.0.1:{port}");
                }
                catch (SocketException) { }
            process.Kill();
            throw new InvalidOperationException("redis-server did not start listening within 10 s.");
        }

        public void Dispose()
        {
            _process.Kill();
            _process.WaitForExit();
            _process.Dispose();
        }
    }
}
