using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;
using StackExchange.Redis;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Cache;

/// <summary>The remote tier on a three-node Redis Cluster: a chain's chunks spread over the nodes' hash slots, and a node that dies costs misses, never a request.</summary>
public sealed class RemoteClusterTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();
    private readonly string _namespace = "cluster-" + Guid.NewGuid().ToString("N")[..8];
    private readonly byte[] _fleetKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);

    private RemoteTierOptions Options(RedisCluster cluster) => new()
    {
        Connection = cluster.Connection, Namespace = _namespace, Admission = RemoteAdmission.Always, SecretKey = _fleetKey,
        OperationTimeout = TimeSpan.FromSeconds(2), BreakDuration = TimeSpan.FromSeconds(30),
    };

    private PrefixCache Cache(KvModel model, RemoteTier remote) =>
        PrefixCache.Open(model, new PrefixCacheOptions { ChunkTokens = Chunk, ExtraTiers = [remote], SecretKey = _fleetKey, AlwaysRestore = true });

    [RedisClusterFact]
    public void TwoProcessesShareAPrefixThroughTheClusterWhoseChunksSpreadOverItsNodes()
    {
        using var cluster = RedisCluster.Shared();
        var prompt = string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6));
        string[] Args(string dir) => ["generate", "--prompt", prompt, "--max-new-tokens", "8", "--json", "--chunk-tokens", "16", "--cache-size", "16MiB",
            "--cache-dir", dir, "--remote", cluster.Connection, "--remote-admission", "always", "--remote-namespace", _namespace, "--remote-timeout", "2s"];
        var key = new Dictionary<string, string> { ["ORTKV_CACHE_KEY"] = Convert.ToHexString(_fleetKey) };
        var before = cluster.KeysPerNode();
        var first = Json(ChildProcess.ConsoleWith(key, Args(_temp.Sub("a"))));
        var second = Json(ChildProcess.ConsoleWith(key, Args(_temp.Sub("b"))));
        int promptTokens = first.GetProperty("prompt_tokens").GetInt32();
        Assert.Equal(0, first.GetProperty("cached_tokens").GetInt32());
        Assert.Equal(promptTokens / Chunk * Chunk, second.GetProperty("cache").GetProperty("tokens_by_tier").GetProperty("remote").GetInt32());
        Assert.Equal(first.GetProperty("tokens").ToString(), second.GetProperty("tokens").ToString());
        var added = cluster.KeysPerNode().Zip(before, (after, was) => after - was).ToArray();
        Assert.True(added.Count(n => n > 0) >= 2, $"the chunks landed on one node only: {string.Join(", ", added)}");
    }

    [RedisClusterFact]
    public void ForgedValuesOnAClusterAreMissesAndAreDeleted()
    {
        using var cluster = RedisCluster.Shared();
        using var model = KvModel.Load(TestPaths.Tiny);
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        using var remote = new RemoteTier(Options(cluster), identity);
        using var redis = RedisServer.Client(cluster.Connection);
        var db = redis.GetDatabase();
        var keys = Enumerable.Range(0, 6).Select(i => TestPayloads.Key(11, i)).ToArray();
        var payload = new byte[identity.PayloadBytes];
        new Random(9).NextBytes(payload);
        foreach (var key in keys) Assert.True(remote.Write(key, TestPayloads.Tokens(key, Chunk), payload));
        var value = (byte[])db.StringGet(remote.Key(keys[2]))!;
        value[^10] ^= 1;
        db.StringSet(remote.Key(keys[2]), value);

        var destinations = keys.Select(_ => (Memory<byte>)new byte[payload.Length]).ToArray();
        var found = remote.TryReadMany(keys, [.. keys.Select(k => TestPayloads.Tokens(k, Chunk))], destinations);
        Assert.Equal([true, true, false, true, true, true], found);
        Assert.All(destinations.Where((_, i) => found[i]), d => Assert.Equal(payload, d.ToArray()));
        Assert.False(db.KeyExists(remote.Key(keys[2])));
    }

    [RedisClusterFact]
    public void KeysAskedOfTheWrongNodeAreRedirectedNotMissed()
    {
        using var cluster = RedisCluster.Shared();
        using var redis = RedisServer.Client(cluster.Connection);
        var keys = Enumerable.Range(0, 24).Select(i => $"{_namespace}:moved:{i}").ToArray();
        foreach (var key in keys) redis.GetDatabase().StringSet(key, key);
        var first = redis.GetServer(cluster.Nodes[0]).EndPoint;
        using var wire = new WireFetcher(StackExchange.Redis.ConfigurationOptions.Parse(cluster.Connection), 2, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(5), 1 << 20);
        var arrived = new System.Collections.Concurrent.ConcurrentDictionary<int, string>();
        // Every key asked of the first node, as a stale slot map would: the others answer MOVED.
        var (failures, redirected) = wire.Fetch(keys, _ => first, null, (i, value, _) => arrived[i] = value is { } v ? System.Text.Encoding.UTF8.GetString(v.Span) : "(nil)");
        Assert.Equal(0, failures);
        Assert.NotEmpty(redirected);
        Assert.NotEmpty(arrived);
        Assert.Equal(keys.Length, arrived.Count + redirected.Count);
        Assert.All(arrived, a => Assert.Equal(keys[a.Key], a.Value));
        Assert.All(redirected, i => Assert.NotEqual(first, redis.GetServer((RedisKey)keys[i]).EndPoint));
    }

    [RedisClusterFact(own: true)]
    public void ANodeThatDiesMidRunCostsMissesNeverAFailedRequest()
    {
        using var cluster = RedisCluster.StartOwn();
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompts = Enumerable.Range(0, 3).Select(i => CacheTestKit.Prompt(8 * Chunk + 2, seed: 90 + i)).ToArray();
        var identity = SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk);
        using (var remote = new RemoteTier(Options(cluster), identity))
        using (var cache = Cache(model, remote))
        {
            foreach (var prompt in prompts) CacheTestKit.Greedy(model, prompt, cache);
            cache.Flush();
        }
        Assert.All(cluster.KeysPerNode(), n => Assert.True(n > 0, "every node should hold some chunks"));

        cluster.Kill(1);
        var logger = new ListLogger();
        using var survivor = new RemoteTier(Options(cluster) with { OperationTimeout = TimeSpan.FromMilliseconds(500) }, identity, logger);
        using var fresh = Cache(model, survivor); // nothing local: every restore goes to the cluster
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var restored = new List<int>();
        foreach (var prompt in prompts)
        {
            var run = CacheTestKit.Greedy(model, prompt, fresh);
            Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null).Tokens, run.Tokens);
            restored.Add(run.Restore.RestoredTokens);
        }
        // The dead node held some of these prompts' chunks (asserted above), so some chain cannot be whole; which one
        // depends on where the keys hash.
        Assert.True(restored.Sum() < prompts.Length * 8 * Chunk, $"restored {string.Join(", ", restored)} tokens with a node holding some of them dead");
        var fourth = CacheTestKit.Prompt(8 * Chunk + 2, seed: 99);
        CacheTestKit.Greedy(model, fourth, fresh); // writes to the live nodes go on, to the dead one fail quietly
        fresh.Flush();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"requests took {clock.Elapsed} with a node down");
    }

    [RedisFact]
    public void AHitRefreshesTheEntrysTimeToLive()
    {
        using var server = RedisServer.Shared();
        var identity = TestPayloads.Identity;
        var options = new RemoteTierOptions
        {
            Connection = server.Endpoint, Namespace = _namespace, Admission = RemoteAdmission.Always, SecretKey = _fleetKey, TimeToLive = TimeSpan.FromHours(1),
            OperationTimeout = TimeSpan.FromSeconds(5),
        };
        using var remote = new RemoteTier(options, identity);
        using var redis = RedisServer.Client(server.Endpoint);
        var db = redis.GetDatabase();
        var keys = new[] { TestPayloads.Key(12, 1), TestPayloads.Key(12, 2) };
        foreach (var key in keys) Assert.True(remote.Write(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)));
        foreach (var key in keys) db.KeyExpire(remote.Key(key), TimeSpan.FromSeconds(30));

        // A hit read from the server, and a hit served by a tier above (a touch).
        Assert.True(remote.TryReadMany([keys[0]], [TestPayloads.Tokens(keys[0])], [new byte[TestPayloads.Payload(keys[0]).Length]])[0]);
        ((Tiers.IKvChunkTier)remote).Touch([keys[1]]);
        db.Ping(); // after the fire-and-forget refreshes on the tier's own connection
        Thread.Sleep(200);
        foreach (var key in keys)
            Assert.True(db.KeyTimeToLive(remote.Key(key)) > TimeSpan.FromMinutes(50), $"{key}: {db.KeyTimeToLive(remote.Key(key))}");
    }


    public void Dispose() => _temp.Dispose();
}
