using System.Diagnostics;
using OrtKvTier.Cache;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;

namespace OrtKvTier.Tests.Cache;

/// <summary>
/// The remote tier against a server that answers nonsense, trickles, stays silent or resets: every request succeeds
/// with the tokens of no cache, and the server costs it at most the fetch deadline.
/// </summary>
public sealed class HostileRemoteTests
{
    private const int Chunk = 16;
    private static readonly TimeSpan FetchTimeout = TimeSpan.FromMilliseconds(600);
    private static readonly byte[] Key = System.Security.Cryptography.RandomNumberGenerator.GetBytes(32);

    public static TheoryData<string> Misbehaviours => [.. FakeRedis.Misbehaviours];

    [Theory]
    [MemberData(nameof(Misbehaviours))]
    public void AServerThatMisbehavesCostsMissesNeverAFailedRequest(string misbehaviour)
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 3, seed: 31);
        var expected = CacheTestKit.Greedy(model, prompt, cache: null).Tokens;
        string ns = "hostile-" + Guid.NewGuid().ToString("N")[..8];
        using var server = new FakeRedis(misbehaviour, ns, outOfMemory: true);
        var logs = new ListLogger();
        using var remote = new RemoteTier(new RemoteTierOptions
        {
            Connection = "redis://" + server.Endpoint, Namespace = ns, Admission = RemoteAdmission.Always, SecretKey = Key,
            OperationTimeout = TimeSpan.FromMilliseconds(400), FetchTimeout = FetchTimeout, FailuresToBreak = 1000,
        }, SlotPoolIdentity.For(model.Fingerprint, model.Layout, Chunk), logs);
        Assert.True(remote.WaitUntilConnected(TimeSpan.FromSeconds(30)), "the client could not connect to the fake server");
        using var cache = PrefixCache.Open(model, new PrefixCacheOptions { Directory = null, ChunkTokens = Chunk, ExtraTiers = [remote], SecretKey = Key, AlwaysRestore = true });

        // Twice: the first request finds nothing above the server and asks it; the second asks again (the host tier holds
        // the chunks the first computed, so it restores those and asks the server for nothing more, or for the rest).
        // More rounds while the server saw no GET yet, each with a prompt nobody computed (the host tier would answer a
        // repeated one): on a loaded machine the client may be reconnecting (its connection timed out on the misbehaving
        // server) when a request looks, and then it asks nobody.
        for (int round = 0; round < 2 || (server.SpoiledGets == 0 && round < 10); round++)
        {
            var roundPrompt = round < 2 ? prompt : CacheTestKit.Prompt(4 * Chunk + 3, seed: 31 + round);
            var roundExpected = round < 2 ? expected : CacheTestKit.Greedy(model, roundPrompt, cache: null).Tokens;
            var clock = Stopwatch.StartNew();
            var run = CacheTestKit.Greedy(model, roundPrompt, cache);
            var elapsed = clock.Elapsed;
            Assert.Equal(roundExpected, run.Tokens);
            Assert.Equal(0, run.Restore.TokensByTier.GetValueOrDefault("remote"));
            // The deadline, plus what a loaded machine adds to a tiny model's run and to connecting.
            Assert.True(elapsed < FetchTimeout + TimeSpan.FromSeconds(3), $"round {round}: {elapsed.TotalMilliseconds:F0} ms");
            cache.Flush();
        }
        Assert.True(server.SpoiledGets > 0, "the tier never fetched from the server: the test did not test the fetch. " + string.Join(" | ", logs.Entries.Select(e => e.Message)) + $" remote: {remote.GetStats()}");
        // Out of memory on writes: said once, whatever the number of refused writes.
        var said = logs.Entries.Select(e => $"{e.Level}: {e.Message}").ToList();
        Assert.True(said.Count(e => e.Contains("OOM", StringComparison.Ordinal)) == 1, string.Join("\n", said));
    }
}
