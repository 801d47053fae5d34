using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tensors;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;
using StackExchange.Redis;

namespace OrtKvTier.Tests.Cache;

/// <summary>The remote tier storing KV in 8 bits against a real Redis server: half the bytes, its own keys, behind the quality gate.</summary>
public sealed class RemoteEncodingTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();
    private readonly string _namespace = "test-enc-" + Guid.NewGuid().ToString("N")[..8];
    private readonly byte[] _fleetKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);

    private RemoteTier Remote(RedisServer server, KvModel model, KvEncoding encoding) => new(
        new RemoteTierOptions { Connection = "redis://" + server.Endpoint, Namespace = _namespace, Admission = RemoteAdmission.Always, OperationTimeout = TimeSpan.FromSeconds(5), SecretKey = _fleetKey, Encoding = encoding },
        SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk));

    // A directory for the quality verdict only (no disk tier would change what is measured: host memory 64 MiB, remote below).
    private PrefixCache Cache(KvModel model, RemoteTier remote) => PrefixCache.Open(model, new PrefixCacheOptions
    {
        ChunkTokens = Chunk, ExtraTiers = [remote], SecretKey = _fleetKey, AlwaysRestore = true,
    });

    private long ValueBytes(RedisServer server, string pattern)
    {
        using var client = ConnectionMultiplexer.Connect(server.Endpoint);
        var redis = client.GetServer(client.GetEndPoints()[0]);
        return redis.Keys(pattern: pattern).Sum(k => (long)client.GetDatabase().StringLength(k));
    }

    [RedisFact]
    public void AnInt8RemoteMovesAboutHalfTheBytesUnderKeysOfItsOwnAndRestoresWhatItStored()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.TinyFp16);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 31);
        foreach (var encoding in new[] { KvEncoding.Exact, KvEncoding.Int8 })
        {
            using var remote = Remote(server, model, encoding);
            using var cache = Cache(model, remote);
            Assert.Equal(encoding, remote.Encoding);
            CacheTestKit.Greedy(model, prompt, cache);
            cache.Flush();
        }
        long exact = ValueBytes(server, $"{_namespace}:*:{Chunk}:????????????:*");
        long int8 = ValueBytes(server, $"{_namespace}:*:{Chunk}:int8:*");
        Assert.True(exact > 0 && int8 > 0, $"exact {exact} bytes, int8 {int8}");
        // Headers and token ids are the same size: the difference is the payloads' (this model's 16-wide heads make groups small: 0.625 of fp16).
        var codec = KvCodec.For(KvEncoding.Int8, model.Layout.Shape, Chunk)!;
        Assert.Equal(4 * (codec.ExactBytes - codec.EncodedBytes), exact - int8);
        Assert.InRange((double)codec.EncodedBytes / codec.ExactBytes, 0.5, 0.63);

        using var again = Remote(server, model, KvEncoding.Int8);
        using var reader = Cache(model, again);
        var run = CacheTestKit.Greedy(model, prompt, reader);
        Assert.Equal(4 * Chunk, run.Restore.RestoredTokens);
        Assert.Equal("int8", run.Restore.EncodingByTier["remote"]);
        Assert.Equal(0, again.Damaged);
    }

    [RedisFact]
    public void AnEncodingTheModelMissesLeavesTheRemoteExactWithAWarning()
    {
        using var server = RedisServer.Shared();
        using var model = KvModel.Load(TestPaths.TinyFp16);
        using var remote = Remote(server, model, KvEncoding.Int4);
        using var cache = Cache(model, remote);
        Assert.Equal(KvEncoding.Exact, remote.Encoding);
        Assert.Contains("remote tier stores KV exact, not int4", Assert.Single(cache.Warnings));
        CacheTestKit.Greedy(model, CacheTestKit.Prompt(2 * Chunk + 2, seed: 32), cache);
        cache.Flush();
        Assert.Equal(0, ValueBytes(server, $"{_namespace}:*:int4:*"));
        Assert.True(ValueBytes(server, $"{_namespace}:*") > 0);
    }

    public void Dispose() => _temp.Dispose();
}
