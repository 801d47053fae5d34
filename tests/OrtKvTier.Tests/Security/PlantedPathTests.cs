using System.Diagnostics;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Security;

/// <summary>
/// Links, FIFOs and sockets planted in a cache directory by anyone who can write it: every `cache` command returns
/// within 10 s, and nothing outside the cache directory changes (a victim tree hashed before and after).
/// </summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class PlantedPathTests : IDisposable
{
    private readonly TempDir _temp = new();

    private string MakeCache(string name)
    {
        var dir = _temp.Sub(name);
        var run = ChildProcess.Console("generate", "--prompt", "A prompt long enough to fill a chunk or two of the cache, and then some.", "--max-new-tokens", "2",
            "--chunk-tokens", "16", "--cache-dir", dir, "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        return dir;
    }

    private string Victim() => TreeHash.Victim(_temp.Sub("victim"));

    private static string Hash(string tree) => TreeHash.Of(tree);

    private static void EveryCommandReturns(string cacheDir)
    {
        foreach (var args in new[] { ["list"], ["stats"], ["verify"], ["clear"], new[] { "prune", "--keep", "0" } })
        {
            var clock = Stopwatch.StartNew();
            var run = ChildProcess.Console(["cache", .. args, "--cache-dir", cacheDir]);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"cache {args[0]} took {clock.Elapsed.TotalSeconds:F1} s");
            Assert.DoesNotContain("   at ", run.StdErr);
        }
    }

    /// <summary>Puts a link to <paramref name="victimFile"/>, a FIFO or a listening socket at <paramref name="path"/>; the socket is returned to keep it open.</summary>
    private static IDisposable? Plant(string path, string kind, string victimFile)
    {
        switch (kind)
        {
            case "link":
                File.CreateSymbolicLink(path, victimFile);
                return null;
            case "fifo":
                ChildProcess.Output("mkfifo", path);
                Assert.True(File.Exists(path), $"mkfifo made no {path}");
                return null;
            default:
                // Bound at a short path (socket paths have a length limit), then moved into place.
                var shortPath = Path.Combine(Path.GetTempPath(), "ortkv-sock-" + Guid.NewGuid().ToString("N")[..8]);
                var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                socket.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(shortPath));
                socket.Listen();
                File.Move(shortPath, path, overwrite: true);
                return socket;
        }
    }

    [Fact]
    public void LinksToADirectoryOutsideAreNeverFollowed()
    {
        var cache = MakeCache("cache");
        var victim = Victim();
        string before = Hash(victim);
        // A link to the victim as if it were a pool, a link as the cache directory itself, and links inside a real pool.
        File.CreateSymbolicLink(Path.Combine(cache, "pool-link"), victim);
        var pool = Directory.GetDirectories(cache).First(d => File.Exists(Path.Combine(d, "slots.bin")) && new DirectoryInfo(d).LinkTarget is null);
        File.Delete(Path.Combine(pool, "writer.lock"));
        File.CreateSymbolicLink(Path.Combine(pool, "writer.lock"), Path.Combine(victim, "created-by-the-cache.lock"));
        File.CreateSymbolicLink(Path.Combine(pool, "shrink.slots.bin"), Path.Combine(victim, "slots.bin"));
        var linkedCache = _temp.Sub("linked-cache");
        File.CreateSymbolicLink(linkedCache, victim);

        EveryCommandReturns(cache);
        var refused = ChildProcess.Console("cache", "prune", "--keep", "0", "--cache-dir", linkedCache);
        Assert.Equal(2, refused.ExitCode);
        Assert.Contains("symbolic link", refused.StdErr);
        EveryCommandReturns(linkedCache);
        // Generation over the linked cache directory answers as without a cache, and says why its disk tier is off.
        var generated = ChildProcess.Console("generate", "--prompt", "A prompt long enough to fill a chunk or two of the cache, and then some.", "--max-new-tokens", "2",
            "--chunk-tokens", "16", "--cache-dir", linkedCache, "--json");
        Assert.True(generated.ExitCode == 0, generated.StdErr);
        Assert.Contains("symbolic link", generated.StdOut);

        Assert.Equal(before, Hash(victim));
        Assert.False(File.Exists(Path.Combine(victim, "created-by-the-cache.lock")));
    }

    /// <summary>
    /// Every file the cache opens while generating (the key, each pool file, the liveness and lock files, an int8 pool's
    /// quality verdict) replaced by a link to a victim file, a FIFO or a socket: generation answers as without a cache,
    /// twice, each within 10 s, and the victim tree is unchanged.
    /// </summary>
    [Theory]
    [InlineData("cache.key", "link")]
    [InlineData("slots.bin", "link")]
    [InlineData("index.journal", "link")]
    [InlineData("index.snapshot", "link")]
    [InlineData("writers.alive", "link")]
    [InlineData("writer.lock", "link")]
    [InlineData(".quality", "link")]
    [InlineData("cache.key", "fifo")]
    [InlineData("slots.bin", "fifo")]
    [InlineData("index.snapshot", "fifo")]
    [InlineData("writers.alive", "fifo")]
    [InlineData("writer.lock", "fifo")]
    [InlineData(".quality", "fifo")]
    [InlineData("cache.key", "socket")]
    [InlineData("index.journal", "socket")]
    [InlineData("writer.lock", "socket")]
    public void GenerationWithSomethingPlantedAtAFileItOpensAnswersAndTouchesNothingOutside(string name, string kind)
    {
        const string prompt = "A prompt long enough to fill a chunk or two of the cache, and then some more words.";
        // An int8 disk (approximate) only where the planted file is its verdict; exact elsewhere, so the tokens must equal no cache's.
        bool int8 = name == ".quality";
        string[] Args(string dir) => ["generate", "--prompt", prompt, "--max-new-tokens", "3", "--chunk-tokens", "16", "--cache-dir", dir, "--json", .. (int8 ? new[] { "--disk-encoding", "int8" } : [])];
        var cache = _temp.Sub("planted-cache");
        Assert.Equal(0, ChildProcess.Console(Args(cache)).ExitCode);
        var victim = Victim();
        string before = Hash(victim);
        var pool = Directory.GetDirectories(cache).Single(d => File.Exists(Path.Combine(d, "slots.bin")));
        string planted = name switch
        {
            "cache.key" => Path.Combine(cache, name),
            ".quality" => pool + ".quality",
            _ => Path.Combine(pool, name),
        };
        if (File.Exists(planted)) File.Delete(planted);
        using var socket = Plant(planted, kind, Path.Combine(victim, name == "slots.bin" ? "slots.bin" : "precious.txt"));

        var expected = System.Text.Json.JsonDocument.Parse(ChildProcess.Console(["generate", "--prompt", prompt, "--max-new-tokens", "3", "--no-cache", "--json"]).StdOut).RootElement.GetProperty("tokens").ToString();
        for (int run = 0; run < 2; run++)
        {
            var clock = Stopwatch.StartNew();
            var result = ChildProcess.Console(Args(cache));
            Assert.True(result.ExitCode == 0, result.StdErr);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"generate took {clock.Elapsed.TotalSeconds:F1} s");
            var tokens = System.Text.Json.JsonDocument.Parse(result.StdOut).RootElement.GetProperty("tokens");
            if (int8) Assert.Equal(3, tokens.GetArrayLength());
            else Assert.Equal(expected, tokens.ToString());
        }
        Assert.Equal(before, Hash(victim));
    }

    /// <summary>
    /// The server over a cache directory where a link to a victim file was planted at each file the cache opens (one at a
    /// time, between two runs of the server): every request answers with the tokens of a server without a cache, within
    /// 10 s, and the victim tree is unchanged.
    /// </summary>
    [Fact]
    public async Task TheServerWithALinkPlantedAtAnyFileItOpensAnswersAndTouchesNothingOutside()
    {
        var body = System.Text.Json.JsonSerializer.Serialize(new
        {
            model = "tiny", max_tokens = 4, temperature = 0,
            messages = new[] { new { role = "user", content = "A prompt long enough to fill a chunk or two of the cache, and then some more words." } },
        });
        async Task<string> Answer(ServerProcess server)
        {
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
            using var response = await http.PostAsync(new Uri(server.BaseUri, "v1/chat/completions"), new StringContent(body, System.Text.Encoding.UTF8, "application/json"));
            Assert.True(response.IsSuccessStatusCode, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
            return System.Text.Json.JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString()!;
        }
        string expected;
        using (var plain = ServerProcess.Start(_temp.Sub("unused"), ("OrtKvTier:CacheEnabled", "false"))) expected = await Answer(plain);
        var victim = Victim();
        string before = Hash(victim);
        foreach (var name in new[] { "cache.key", "slots.bin", "index.journal", "index.snapshot", "writers.alive", "writer.lock" })
        {
            var cache = _temp.Sub("serve-" + name);
            using (var first = ServerProcess.Start(cache)) Assert.Equal(expected, await Answer(first));
            var pool = Directory.GetDirectories(cache).Single(d => File.Exists(Path.Combine(d, "slots.bin")));
            string planted = name == "cache.key" ? Path.Combine(cache, name) : Path.Combine(pool, name);
            if (File.Exists(planted)) File.Delete(planted);
            File.CreateSymbolicLink(planted, Path.Combine(victim, name == "slots.bin" ? "slots.bin" : "precious.txt"));
            using var server = ServerProcess.Start(cache);
            for (int run = 0; run < 2; run++) Assert.Equal(expected, await Answer(server));
        }
        Assert.Equal(before, Hash(victim));
    }

    [Fact]
    public void FifosAndSocketsAtThePoolsFilesHangNothing()
    {
        var cache = MakeCache("fifo-cache");
        var pool = Directory.GetDirectories(cache).First(d => File.Exists(Path.Combine(d, "slots.bin")));
        foreach (var name in new[] { "slots.bin", "index.journal" })
        {
            File.Delete(Path.Combine(pool, name));
            Plant(Path.Combine(pool, name), "fifo", "");
        }
        using var socket = Plant(Path.Combine(pool, "index.snapshot"), "socket", "");
        EveryCommandReturns(cache);

        // A generation beside them still answers (the disk tier is refused, naming the file).
        var clock = Stopwatch.StartNew();
        var run = ChildProcess.Console("generate", "--prompt", "A prompt long enough to fill a chunk or two of the cache, and then some.", "--max-new-tokens", "2",
            "--chunk-tokens", "16", "--cache-dir", cache, "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10));
    }

    /// <summary>A FIFO planted as the cache directory, or as the pool directory inside it: generation answers at once, its disk tier off naming the FIFO, and every command returns.</summary>
    [Theory]
    [InlineData("cache directory")]
    [InlineData("pool directory")]
    public void AFifoPlantedAsADirectoryOfTheCacheHangsNothing(string where)
    {
        var cache = MakeCache("fifo-dir-cache");
        var pool = Directory.GetDirectories(cache).Single(d => File.Exists(Path.Combine(d, "slots.bin")));
        var planted = where == "pool directory" ? pool : cache;
        Directory.Delete(planted, recursive: true);
        ChildProcess.Output("mkfifo", planted);

        var clock = Stopwatch.StartNew();
        var run = ChildProcess.Console("generate", "--prompt", "A prompt long enough to fill a chunk or two of the cache, and then some.", "--max-new-tokens", "2",
            "--chunk-tokens", "16", "--cache-dir", cache, "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"generate took {clock.Elapsed.TotalSeconds:F1} s");
        Assert.Contains($"{planted} is not a directory (a FIFO)", run.StdOut);
        EveryCommandReturns(cache);
    }

    [Fact]
    public void AHardLinkPlantedAtAPoolFileIsNeverWritten()
    {
        // The victim: another pool of the same model elsewhere (a file the cache could take for its own).
        var victim = MakeCache("victim-pool");
        var cache = MakeCache("hard-link-cache");
        string before = Hash(victim);
        var victimPool = Directory.GetDirectories(victim).Single();
        var pool = Directory.GetDirectories(cache).Single();
        foreach (var name in new[] { "slots.bin", "index.journal" })
        {
            File.Delete(Path.Combine(pool, name));
            ChildProcess.Output("ln", Path.Combine(victimPool, name), Path.Combine(pool, name));
        }
        var run = ChildProcess.Console("generate", "--prompt", "Another prompt, long enough to fill a chunk or two of the cache, and more.", "--max-new-tokens", "2",
            "--chunk-tokens", "16", "--cache-dir", cache, "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.Contains("hard link", run.StdOut);
        EveryCommandReturns(cache);
        Assert.Equal(before, Hash(victim));
    }

    [TmpfsFact]
    public void AReadOnlyFileSystemIsSaidAtOnceAndItsPoolServed()
    {
        using var disk = new Tmpfs(_temp.Sub("ro"), "64m");
        var cache = Path.Combine(disk.Path, "cache");
        string prompt = "A prompt long enough to fill a chunk or two of the cache, and then some.";
        string[] Args() => ["generate", "--prompt", prompt, "--max-new-tokens", "2", "--chunk-tokens", "16", "--cache-dir", cache, "--always-restore", "--json"];
        var written = ChildProcess.Console(Args());
        Assert.True(written.ExitCode == 0, written.StdErr);
        disk.ReadOnly(true);
        try
        {
            var run = ChildProcess.Console(Args());
            Assert.True(run.ExitCode == 0, run.StdErr);
            var json = System.Text.Json.JsonDocument.Parse(run.StdOut).RootElement;
            Assert.Equal(32, json.GetProperty("cached_tokens").GetInt32());
            var warning = Assert.Single(json.GetProperty("cache").GetProperty("warnings").EnumerateArray()).GetString()!;
            Assert.Contains("read-only file system", warning);
            Assert.DoesNotContain("another process", warning);
            // The same tokens as the writable run: the pool is served as it is.
            Assert.Equal(System.Text.Json.JsonDocument.Parse(written.StdOut).RootElement.GetProperty("tokens").GetRawText(), json.GetProperty("tokens").GetRawText());
        }
        finally
        {
            disk.ReadOnly(false);
        }
    }

    public void Dispose() => _temp.Dispose();
}
