using OrtKvTier.Keys;
using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Generation;
using OrtKvTier.Tensors;
using OrtKvTier.Tiers.Remote;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using StackExchange.Redis;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Cache;

/// <summary>The remote tier against a real Redis server.</summary>
public sealed class RemoteTierTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();
    private readonly string _namespace = "test-" + Guid.NewGuid().ToString("N")[..8];
    /// <summary>The key this test's fleet shares (processes share entries only when they share a key).</summary>
    private readonly byte[] _fleetKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);

    private RemoteTierOptions Options(RedisServer server, RemoteAdmission admission = RemoteAdmission.Always) =>
        // Generous timeouts: these tests are about what is stored, not about a slow server (the kill test sets its own).
        new() { Connection = "redis://" + server.Endpoint, Namespace = _namespace, Admission = admission, BreakDuration = TimeSpan.FromSeconds(30), OperationTimeout = TimeSpan.FromSeconds(5), SecretKey = _fleetKey };

    private PrefixCache Cache(KvModel model, RemoteTier remote, string? directory) =>
        PrefixCache.Open(model, new PrefixCacheOptions { Directory = directory, ChunkTokens = Chunk, DiskCapacityBytes = 16L << 20, ExtraTiers = [remote], SecretKey = _fleetKey, AlwaysRestore = true });

    private Dictionary<string, string> FleetEnvironment => new() { ["ORTKV_CACHE_KEY"] = Convert.ToHexString(_fleetKey) };

    [RedisFact]
    public void ASecondProcessWithItsOwnLocalCacheRestoresTheFirstsPrefixFromTheServer()
    {
        using var server = RedisServer.Shared();
        var prompt = string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6));
        string[] Args(string dir) => ["generate", "--prompt", prompt, "--max-new-tokens", "8", "--json", "--chunk-tokens", "16", "--cache-size", "16MiB",
            "--cache-dir", dir, "--remote", "redis://" + server.Endpoint, "--remote-admission", "always", "--remote-namespace", _namespace, "--remote-timeout", "5s"];
        var first = Json(ChildProcess.ConsoleWith(FleetEnvironment, Args(_temp.Sub("a"))));
        var second = Json(ChildProcess.ConsoleWith(FleetEnvironment, Args(_temp.Sub("b"))));
        int promptTokens = first.GetProperty("prompt_tokens").GetInt32();
        Assert.Equal(0, first.GetProperty("cached_tokens").GetInt32());
        Assert.Equal(promptTokens / Chunk * Chunk, second.GetProperty("cached_tokens").GetInt32());
        Assert.Equal(second.GetProperty("cached_tokens").GetInt32(), second.GetProperty("cache").GetProperty("tokens_by_tier").GetProperty("remote").GetInt32());
        Assert.Equal(first.GetProperty("tokens").ToString(), second.GetProperty("tokens").ToString());
        // The second process promoted what it read into its own disk tier.
        var stats = ChildProcess.ConsoleWith(FleetEnvironment, "cache", "stats", "--cache-dir", _temp.Sub("b"), "--json");
        Assert.True(JsonDocument.Parse(stats.StdOut).RootElement.GetProperty("pools")[0].GetProperty("entries").GetInt32() >= promptTokens / Chunk);
    }

    [RedisFact]
    public void SeenTwiceUploadsAChunkOnlyOnceTwoInstancesHaveComputedIt()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompt = CacheTestKit.Prompt(3 * Chunk + 2, seed: 70);
        int Restored(string name)
        {
            using var remote = new RemoteTier(Options(server, RemoteAdmission.SeenTwice), SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk));
            using var cache = Cache(model, remote, directory: null);
            var run = CacheTestKit.Greedy(model, prompt, cache);
            cache.Flush();
            return run.Restore.TokensByTier.GetValueOrDefault("remote");
        }
        Assert.Equal(0, Restored("first"));   // computed; the server only counted it
        Assert.Equal(0, Restored("second"));  // computed again: now uploaded
        Assert.Equal(3 * Chunk, Restored("third"));
    }

    [RedisFact]
    public void TamperedTruncatedAndForeignValuesAreMissesAndAreDeleted()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        using var remote = new RemoteTier(Options(server), identity);
        var (keys, tokens, payload) = StoreThreeDamaged(server, remote, identity, seed: 9);
        var buffer = new byte[payload.Length];
        using var redis = RedisServer.Client(server.Endpoint);
        for (int i = 0; i < 3; i++)
        {
            Assert.False(remote.TryRead(keys[i], tokens[i], buffer), $"value {i}");
            Assert.False(redis.GetDatabase().KeyExists(remote.Key(keys[i])), $"value {i} should be deleted");
        }
        Assert.Equal(3, remote.Damaged);
    }

    [RedisFact]
    public void ValuesAnotherFormatVersionWroteAreMissesThatAreLeftForThatVersion()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        var logger = new ListLogger();
        using var remote = new RemoteTier(Options(server), identity, logger);
        var key = TestPayloads.Key(23, 0);
        var tokens = TestPayloads.Tokens(key, Chunk);
        var payload = TestPayloads.Payload(key, (int)identity.PayloadBytes);
        Assert.True(remote.Write(key, tokens, payload));
        using var redis = RedisServer.Client(server.Endpoint);
        var db = redis.GetDatabase();
        // What a build of the previous version keeps under its own key name (a rolling upgrade shares the server).
        string current = remote.Key(key), previous = current.Replace($":v{RemoteEntry.Version}:", $":v{RemoteEntry.Version - 1}:");
        Assert.NotEqual(current, previous);
        Assert.True(db.KeyRename(current, previous));

        Assert.False(remote.TryRead(key, tokens, new byte[payload.Length]));
        Assert.Equal([false], remote.TryReadMany([key], [tokens], [new byte[payload.Length]]));
        Assert.True(db.KeyExists(previous), "the other version's value must not be deleted");
        Assert.True(logger.Entries.All(e => e.Level < Microsoft.Extensions.Logging.LogLevel.Warning), string.Join("\n", logger.Entries.Select(e => e.Message)));
        Assert.Equal(0, remote.Damaged);
    }

    [RedisFact]
    public void PipelinedReadsReceivingIntoTheirDestinationsRejectTheSameDamageAndReportOnlyIntactChunksAsArrived()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        using var remote = new RemoteTier(Options(server), identity);
        var (keys, tokens, payload) = StoreThreeDamaged(server, remote, identity, seed: 19);
        var intact = TestPayloads.Key(19, 3);
        Assert.True(remote.Write(intact, TestPayloads.Tokens(intact, Chunk), payload));
        ChunkKey[] asked = [.. keys, intact];
        var destinations = asked.Select(_ => new byte[payload.Length]).ToArray();
        var arrived = new System.Collections.Concurrent.ConcurrentBag<int>();

        var found = remote.TryReadMany(asked, [.. tokens, TestPayloads.Tokens(intact, Chunk)], [.. destinations.Select(d => (Memory<byte>)d)], arrived.Add);

        Assert.Equal([false, false, false, true], found);
        Assert.Equal([3], arrived.ToArray());
        Assert.Equal(payload, destinations[3]);
        Assert.Equal(3, remote.Damaged);
        using var redis = RedisServer.Client(server.Endpoint);
        Assert.All(keys, k => Assert.False(redis.GetDatabase().KeyExists(remote.Key(k))));
    }

    /// <summary>
    /// Stores three chunks, then damages them on the server: one payload byte flipped (same length), the value cut in half,
    /// another model's valid entry put under this model's key name (same length). Returns what was stored.
    /// </summary>
    private (ChunkKey[] Keys, int[][] Tokens, byte[] Payload) StoreThreeDamaged(RedisServer server, RemoteTier remote, SlotPoolIdentity identity, int seed)
    {
        using var redis = RedisServer.Client(server.Endpoint);
        var db = redis.GetDatabase();
        var keys = Enumerable.Range(0, 3).Select(i => TestPayloads.Key(seed, i)).ToArray();
        var tokens = keys.Select(k => TestPayloads.Tokens(k, Chunk)).ToArray();
        var payload = new byte[identity.PayloadBytes];
        new Random(seed).NextBytes(payload);
        foreach (var (key, i) in keys.Select((k, i) => (k, i))) Assert.True(remote.Write(key, tokens[i], payload));
        var buffer = new byte[payload.Length];
        Assert.True(remote.TryRead(keys[0], tokens[0], buffer));
        Assert.Equal(payload, buffer);

        var value = (byte[])db.StringGet(remote.Key(keys[0]))!;
        value[^100] ^= 0x20;
        db.StringSet(remote.Key(keys[0]), value);
        var truncated = (byte[])db.StringGet(remote.Key(keys[1]))!;
        db.StringSet(remote.Key(keys[1]), truncated[..(truncated.Length / 2)]);
        using var other = new RemoteTier(Options(server), identity with { Fingerprint = new ModelFingerprint(42) });
        Assert.True(other.Write(keys[2], tokens[2], payload));
        db.StringSet(remote.Key(keys[2]), db.StringGet(other.Key(keys[2])));
        return (keys, tokens, payload);
    }

    [RedisTheory]
    [InlineData(false, 4)]
    [InlineData(true, 4)]
    [InlineData(false, 0)] // through the client's own connection (as over TLS)
    public void ChunksFromTheServerArePlacedAsTheyArriveAndTokensEqualAPrefillWhateverPartOfThePromptTheServerHolds(bool sharedBuffer, int sockets)
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.WithSharedBuffer(TestPaths.Tiny, _temp.Sub("model"), sharedBuffer));
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        var stored = CacheTestKit.Prompt(4 * Chunk + 2, seed: 73);
        using (var writerTier = new RemoteTier(Options(server), identity))
        using (var writer = Cache(model, writerTier, directory: null))
        {
            CacheTestKit.Greedy(model, stored, writer);
            writer.Flush();
        }
        using var remote = new RemoteTier(Options(server) with { SocketsPerServer = sockets }, identity);
        using var reader = Cache(model, remote, directory: null);
        void Check(int[] prompt, string[] tiers, string what)
        {
            var run = CacheTestKit.Greedy(model, prompt, reader);
            Assert.Equal(tiers, run.Restore.ChunkTiers);
            PrefixCacheParityTests.AssertSame(CacheTestKit.Greedy(model, prompt, cache: null), run, what);
        }

        // The whole prompt's chunks on the server: the past prepared up front holds every one.
        Check(stored, ["remote", "remote", "remote", "remote"], "every chunk from the server");
        reader.Clear();
        // A longer prompt: the server holds its first four chunks of seven, the past is prepared again for those.
        Check([.. stored[..(4 * Chunk)], .. CacheTestKit.Prompt(3 * Chunk + 2, seed: 74)], ["remote", "remote", "remote", "remote"], "a longer prompt");
        reader.Clear();
        // Host memory holds the first two chunks, the server the rest.
        Check([.. stored[..(2 * Chunk)], 7, 8], ["remote", "remote"], "two chunks from the server");
        Check(stored, ["host", "host", "remote", "remote"], "two from host memory, two from the server");
        reader.Clear();
        // A damaged chunk on the server ends the chain before it.
        using (var redis = RedisServer.Client(server.Endpoint))
        {
            var name = remote.Key(reader.Chain.Keys(stored[..(4 * Chunk)])[2]);
            var value = (byte[])redis.GetDatabase().StringGet(name)!;
            value[^7] ^= 1;
            redis.GetDatabase().StringSet(name, value);
        }
        Check(stored, ["remote", "remote"], "a damaged third chunk");
    }

    [RedisFact]
    public void TheCallersPastIsPreparedOnlyWhenTheServerReturnsChunksAndThenOnce()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 75);
        using var remote = new RemoteTier(Options(server), identity);
        using var reader = Cache(model, remote, directory: null);
        using var past = PastKeyValues.Create(model.Layout);
        var prepared = new List<int>();
        PrefixRestoreReport Restore()
        {
            reader.Clear();
            return reader.Restore(prompt, 0, KvMemory.Host, reader.Chain, rows =>
            {
                prepared.Add(rows);
                past.PrepareRestore(rows);
                return past;
            });
        }

        Assert.Equal(0, Restore().RestoredTokens);
        Assert.Empty(prepared); // nothing came back: the past is left as it was
        using (var writerTier = new RemoteTier(Options(server), identity))
        using (var writer = Cache(model, writerTier, directory: null))
        {
            CacheTestKit.Greedy(model, prompt, writer);
            writer.Flush();
        }
        Assert.Equal(4 * Chunk, Restore().RestoredTokens);
        Assert.Equal([4 * Chunk], prepared);
    }

    [Fact]
    public void AServerThatIsDownCostsAtMostOneConnectTimeoutThenTheBreakerAnswers()
    {
        var port = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        port.Start();
        int closed = ((System.Net.IPEndPoint)port.LocalEndpoint).Port;
        port.Stop(); // nothing listens there now
        var identity = TestPayloads.Identity;
        var options = new RemoteTierOptions { Connection = $"127.0.0.1:{closed}", OperationTimeout = TimeSpan.FromMilliseconds(250) };

        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var remote = new RemoteTier(options, identity);
        var opened = clock.Elapsed;
        Assert.False(remote.Contains(new ChunkKey(1)));
        var first = clock.Elapsed - opened;
        for (int i = 0; i < 20; i++) Assert.False(remote.Contains(new ChunkKey((ulong)i)));
        var next = clock.Elapsed - opened - first;

        Assert.True(opened < TimeSpan.FromSeconds(1), $"opening took {opened.TotalMilliseconds:F0} ms");
        Assert.True(first < TimeSpan.FromSeconds(3), $"the first operation took {first.TotalMilliseconds:F0} ms (connect timeout 1 s)");
        Assert.True(next < TimeSpan.FromSeconds(1), $"20 more operations took {next.TotalMilliseconds:F0} ms: the breaker should answer them");
        Assert.True(remote.IsBroken);
    }

    [RedisFact(ownServer: true)]
    public void WhenTheServerDiesRequestsStillSucceedFromLocalTiersOrByPrefill()
    {
        using var server = RedisServer.StartOwn();
        using var model = KvModel.Load(TestPaths.Tiny);
        var logger = new ListLogger();
        using var remote = new RemoteTier(Options(server) with { OperationTimeout = TimeSpan.FromMilliseconds(100) }, SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk), logger);
        using var cache = Cache(model, remote, _temp.Sub("cache"));
        var seen = CacheTestKit.Prompt(4 * Chunk + 2, seed: 71);
        var fresh = CacheTestKit.Prompt(4 * Chunk + 2, seed: 72);
        CacheTestKit.Greedy(model, seen, cache);
        cache.Flush();

        server.Kill();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var restored = CacheTestKit.Greedy(model, seen, cache);
        var prefilled = CacheTestKit.Greedy(model, fresh, cache);
        var again = CacheTestKit.Greedy(model, fresh, cache);
        cache.Flush();
        Assert.Equal(4 * Chunk, restored.Restore.RestoredTokens);
        Assert.All(restored.Restore.ChunkTiers, t => Assert.Equal("host", t));
        PrefixCacheParityTests.AssertSame(CacheTestKit.Greedy(model, fresh, cache: null), prefilled, "prefill with the server down");
        Assert.Equal(4 * Chunk, again.Restore.RestoredTokens);
        Assert.True(remote.Failures > 0);
        Assert.True(remote.IsBroken);
        Assert.Contains(logger.Entries, e => e.Message.Contains("leaving it alone"));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"requests took {clock.Elapsed} with the server down");
    }


    public void Dispose() => _temp.Dispose();
}
