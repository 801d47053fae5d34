using System.Buffers.Binary;
using System.Diagnostics;
using OrtKvTier.Cache;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using OrtKvTier.Tiers.Remote;
using StackExchange.Redis;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Security;

/// <summary>
/// The cache trusts nobody: an attacker who can write the cache directory or the Redis server, but does not hold the
/// cache's key, can neither make a victim restore other bytes nor learn its prompts; tenants never share entries.
/// </summary>
public sealed class AttackTests : IDisposable
{
    private const int Chunk = 16;
    private readonly TempDir _temp = new();

    [Fact]
    public void ASlotForgedWithAnotherPromptsPayloadAndRecomputedTagsIsAMissAndVerifyReportsIt()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var victim = CacheTestKit.Prompt(4 * Chunk + 2, seed: 81);
        var reference = CacheTestKit.Greedy(model, victim, cache: null);
        var (target, source, data, identity) = StoreTwoPrompts(model, dir, victim, CacheTestKit.Prompt(4 * Chunk + 2, seed: 82), chunk: 1);

        // The attacker copies the other prompt's payload into the victim's slot and writes a complete, well-formed
        // header for it (the victim's key, generation and token ids, read from the file) with every tag recomputed
        // under the best key it has: its own.
        var slotBytes = identity.SlotBytes;
        long victimSlot = SlotStart(data, target, slotBytes), otherSlot = SlotStart(data, source, slotBytes);
        int headerBytes = StoredFormats.SlotHeaderBytes(Chunk);
        var bytes = File.ReadAllBytes(data);
        var payload = bytes.AsSpan((int)otherSlot + headerBytes, (int)identity.PayloadBytes).ToArray();
        var victimHeader = bytes.AsSpan((int)victimSlot, headerBytes);
        var attacker = CacheSecret.CreateRandom();
        var nonce = CacheSecret.NewEntryNonce();
        var seal = attacker.SealFor(nonce, encrypted: false);
        var stored = new byte[payload.Length];
        var tag = PayloadSeal.SealInto(payload, stored, seal);
        var forged = new byte[headerBytes];
        SlotHeader.Write(forged, identity, attacker, BinaryPrimitives.ReadInt32LittleEndian(victimHeader[StoredFormats.ShSlotNumber..]),
            BinaryPrimitives.ReadUInt64LittleEndian(victimHeader[StoredFormats.ShGeneration..]), target, victim.AsSpan(Chunk, Chunk),
            new SealedPayload(payload.Length, tag, nonce, seal));
        using (var file = File.OpenHandle(data, FileMode.Open, FileAccess.Write))
        {
            RandomAccess.Write(file, forged, victimSlot);
            RandomAccess.Write(file, stored, victimSlot + headerBytes);
        }

        using (var pool = SlotPool.OpenExisting(Path.GetDirectoryName(data)!))
            Assert.Equal(1, pool.Verify().Dropped); // `cache verify` reports it
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
        {
            var run = CacheTestKit.Greedy(model, victim, cache);
            Assert.Equal(Chunk, run.Restore.RestoredTokens); // chunk 0 is the victim's own; the forged chunk 1 ends the chain
            Assert.Equal(reference.Tokens, run.Tokens);
            Assert.Equal(reference.Logits, run.Logits);
        }
    }

    [Fact]
    public void ASlotCopiedWholeIntoAnotherSlotIsAMiss()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var victim = CacheTestKit.Prompt(3 * Chunk + 2, seed: 83);
        var other = CacheTestKit.Prompt(3 * Chunk + 2, seed: 84);
        var (target, source, data, identity) = StoreTwoPrompts(model, dir, victim, other, chunk: 0);
        long slotBytes = identity.SlotBytes;
        // An authentic slot (right key, right MACs) replayed at the victim's position.
        var bytes = File.ReadAllBytes(data);
        long from = SlotStart(data, source, slotBytes), to = SlotStart(data, target, slotBytes);
        using (var file = File.OpenHandle(data, FileMode.Open, FileAccess.Write))
            RandomAccess.Write(file, bytes.AsSpan((int)from, (int)slotBytes), to);
        using var reopened = CacheTestKit.Open(model, dir, Chunk);
        Assert.Equal(0, CacheTestKit.Greedy(model, victim, reopened).Restore.RestoredTokens);
        Assert.Equal(3 * Chunk, CacheTestKit.Greedy(model, other, reopened).Restore.RestoredTokens);
    }

    [Fact]
    public void JournalRecordsForgedWithoutTheKeyAreSkippedAndChangeNothing()
    {
        var options = new SlotPoolOptions { Directory = _temp.Sub("pool"), Identity = TestPayloads.Identity, CapacitySlots = 8 };
        var keys = new[] { TestPayloads.Key(5, 1), TestPayloads.Key(5, 2) };
        using (var pool = SlotPool.Open(options))
            foreach (var key in keys) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        // Well-formed records under another key: remove the first entry, point the second at another slot, clear all.
        var forger = new JournalCodec(CacheSecret.CreateRandom());
        var journal = Path.Combine(options.Directory, StoredFormats.JournalFileName);
        File.AppendAllBytes(journal, [.. forger.Remove(new SlotEntry(keys[0], 0, 1, 32, 0)), .. forger.Put(new SlotEntry(keys[1], 0, 1, 32, 100)), .. forger.Clear()]);
        foreach (var readOnly in new[] { true, false })
        {
            using var pool = SlotPool.Open(options with { ReadOnly = readOnly });
            foreach (var key in keys)
            {
                var buffer = new byte[pool.PayloadCapacity];
                Assert.True(pool.TryGet(key, TestPayloads.Tokens(key), buffer, out int length), $"{key} (read-only {readOnly})");
                Assert.Equal(TestPayloads.Payload(key), buffer[..length]);
            }
        }
    }

    [RedisFact]
    public void ARemoteValueForgedWithRecomputedTagsIsAMissAndIsDeleted()
    {
        using var server = RedisServer.Shared();
        var identity = TestPayloads.Identity;
        var fleetKey = CacheSecret.KeyBytes;
        var options = new RemoteTierOptions { Connection = server.Endpoint, Namespace = "attack-" + Guid.NewGuid().ToString("N")[..8], Admission = RemoteAdmission.Always,
            SecretKey = System.Security.Cryptography.RandomNumberGenerator.GetBytes(fleetKey), OperationTimeout = TimeSpan.FromSeconds(5) };
        using var remote = new RemoteTier(options, identity);
        using var redis = RedisServer.Client(server.Endpoint);
        var db = redis.GetDatabase();
        var keys = Enumerable.Range(0, 4).Select(i => TestPayloads.Key(6, i)).ToArray();
        foreach (var key in keys) Assert.True(remote.Write(key, TestPayloads.Tokens(key), TestPayloads.Payload(key)));

        // Each value replaced by another chunk's payload, sealed and tagged completely under the attacker's key,
        // with or without encryption; one more is the other key's authentic value copied under this key's name.
        var attacker = CacheSecret.CreateRandom();
        for (int i = 0; i < 3; i++)
            db.StringSet(remote.Key(keys[i]), RemoteEntry.Encode(identity, attacker, encrypt: i == 1, keys[i], TestPayloads.Tokens(keys[i]), TestPayloads.Payload(keys[(i + 1) % 4])));
        db.StringSet(remote.Key(keys[3]), db.StringGet(remote.Key(keys[0])));

        foreach (var key in keys)
        {
            Assert.False(remote.TryRead(key, TestPayloads.Tokens(key), new byte[TestPayloads.Payload(key).Length]), $"{key} was served");
            Assert.False(db.KeyExists(remote.Key(key)), $"{key} was not deleted");
        }
        Assert.Equal(4, remote.Damaged);
    }

    [Fact]
    public void TenantsNeverHitEachOthersEntriesAndEachStillHitsItsOwn()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 85);
        var reference = CacheTestKit.Greedy(model, prompt, cache: null);
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
        {
            Assert.Equal(0, CacheTestKit.Greedy(model, prompt, cache, tenant: "alice").Restore.RestoredTokens);
            var bob = CacheTestKit.Greedy(model, prompt, cache, tenant: "bob");
            Assert.Equal(0, bob.Restore.RestoredTokens);
            Assert.Equal(reference.Tokens, bob.Tokens);
            Assert.Equal(0, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens); // no tenant is a tenant too
            Assert.Equal(4 * Chunk, CacheTestKit.Greedy(model, prompt, cache, tenant: "alice").Restore.RestoredTokens);
        }
        using (var reopened = CacheTestKit.Open(model, dir, Chunk))
        {
            Assert.Equal(4 * Chunk, reopened.CachedPrefixLength(prompt, "alice"));
            Assert.Equal(4 * Chunk, reopened.CachedPrefixLength(prompt, "bob"));
            Assert.Equal(0, reopened.CachedPrefixLength(prompt, "carol"));
            var alice = CacheTestKit.Greedy(model, prompt, reopened, tenant: "alice");
            Assert.Equal(4 * Chunk, alice.Restore.RestoredTokens);
            Assert.Equal(reference.Tokens, alice.Tokens);
            Assert.Equal(0, CacheTestKit.Greedy(model, prompt, reopened, tenant: "carol").Restore.RestoredTokens);
        }
    }

    [Fact]
    public void AProcessWithAnotherKeyMissesEverythingAndLeavesTheEntriesOfTheKeyIntact()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(3 * Chunk + 2, seed: 86);
        using (var cache = CacheTestKit.Open(model, dir, Chunk)) CacheTestKit.Greedy(model, prompt, cache);
        var stranger = new PrefixCacheOptions { Directory = dir, ChunkTokens = Chunk, SecretKey = new byte[32], AlwaysRestore = true };
        using (var cache = PrefixCache.Open(model, stranger))
        {
            Assert.Equal(0, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens);
            Assert.Empty(cache.Warnings); // another key is not an error
        }
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
            Assert.Equal(3 * Chunk, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens);
    }

    [Fact]
    public void WithEncryptionNoRunOfThePromptsTokenIdsIsInAnyCacheFileAndHitsStillRestore()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompt = CacheTestKit.Prompt(4 * Chunk + 2, seed: 87);
        string Fill(string name, bool encrypt)
        {
            var dir = _temp.Sub(name);
            using var cache = CacheTestKit.Open(model, dir, Chunk, encrypt: encrypt);
            CacheTestKit.Greedy(model, prompt, cache);
            cache.Flush();
            return dir;
        }
        var clear = Fill("clear", encrypt: false);
        var encrypted = Fill("encrypted", encrypt: true);
        Assert.True(TokenRunsIn(clear, prompt) > 0, "the check finds token ids stored in the clear");
        Assert.Equal(0, TokenRunsIn(encrypted, prompt));

        using var reopened = CacheTestKit.Open(model, encrypted, Chunk, encrypt: true);
        var run = CacheTestKit.Greedy(model, prompt, reopened);
        Assert.Equal(4 * Chunk, run.Restore.RestoredTokens);
        Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null).Tokens, run.Tokens);
    }

    [RedisFact]
    public void RemoteValuesAreEncryptedByDefault()
    {
        using var server = RedisServer.Shared();
        var identity = TestPayloads.Identity;
        var ns = "enc-" + Guid.NewGuid().ToString("N")[..8];
        using var remote = new RemoteTier(new RemoteTierOptions { Connection = server.Endpoint, Namespace = ns, Admission = RemoteAdmission.Always, OperationTimeout = TimeSpan.FromSeconds(5) }, identity);
        var key = TestPayloads.Key(7, 1);
        var tokens = TestPayloads.Tokens(key);
        Assert.True(remote.Write(key, tokens, TestPayloads.Payload(key)));
        using var redis = RedisServer.Client(server.Endpoint);
        var value = (byte[])redis.GetDatabase().StringGet(remote.Key(key))!;
        Assert.Equal(-1, value.AsSpan().IndexOf(TokenBytes.AsLittleEndian(tokens.AsSpan(0, 2), new byte[8]).ToArray()));
        Assert.Equal(-1, value.AsSpan().IndexOf(TestPayloads.Payload(key).AsSpan(0, 64)));
        var buffer = new byte[TestPayloads.Payload(key).Length];
        Assert.True(remote.TryRead(key, tokens, buffer));
        Assert.Equal(TestPayloads.Payload(key), buffer);
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void UnderUmask000EveryCacheFileIsOwnerOnly()
    {
        // Two missing parents: they are created owner-only too (Directory.CreateDirectory would give them 0777 under umask 000).
        var dir = Path.Combine(_temp.Sub("missing-parent"), "and-another", "umask-cache");
        var info = new ProcessStartInfo("sh") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = TestPaths.RepoRoot };
        foreach (var a in new[] { "-c", "umask 000 && exec dotnet \"$@\"", "sh", ChildProcess.ConsoleDll, "generate", "--model", TestPaths.Tiny, "--prompt", "hello hello hello hello hello hello hello hello hello",
                     "--max-new-tokens", "2", "--chunk-tokens", "16", "--cache-dir", dir, "--json" })
            info.ArgumentList.Add(a);
        using (var process = Process.Start(info)!)
        {
            var stderr = process.StandardError.ReadToEndAsync();
            process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            Assert.True(process.ExitCode == 0, stderr.Result);
        }
        var owner = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        foreach (var directory in Directory.GetDirectories(dir, "*", SearchOption.AllDirectories).Prepend(dir).Append(Path.GetDirectoryName(dir)!).Append(_temp.Sub("missing-parent")))
            Assert.True(File.GetUnixFileMode(directory) == (owner | UnixFileMode.UserExecute), $"{directory} is {File.GetUnixFileMode(directory)}");
        var files = Directory.GetFiles(dir, "*", SearchOption.AllDirectories);
        Assert.Contains(files, f => Path.GetFileName(f) == CacheKeys.FileName);
        Assert.Contains(files, f => Path.GetFileName(f) == StoredFormats.DataFileName);
        foreach (var file in files) Assert.True(File.GetUnixFileMode(file) == owner, $"{file} is {File.GetUnixFileMode(file)}");
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void LinksPlantedAtTheKeyFileAndItsTemporaryRedirectNothing()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var prompt = CacheTestKit.Prompt(2 * Chunk + 2, seed: 88);
        var victim = _temp.Sub("victim.txt");
        File.WriteAllText(victim, "precious");

        // The key file itself a link (to a file the attacker controls): refused, the disk is off, nothing is written through it.
        var linked = _temp.Sub("linked-key");
        Directory.CreateDirectory(linked);
        File.CreateSymbolicLink(Path.Combine(linked, CacheKeys.FileName), victim);
        using (var cache = CacheTestKit.Open(model, linked, Chunk))
        {
            Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null).Tokens, CacheTestKit.Greedy(model, prompt, cache).Tokens);
            Assert.Contains(cache.Warnings, w => w.Contains("symbolic link", StringComparison.Ordinal));
            Assert.Null(cache.DiskDirectory);
        }

        // A link where the key's temporary will be created: removed, not followed.
        var fresh = _temp.Sub("fresh");
        Directory.CreateDirectory(fresh);
        File.CreateSymbolicLink(Path.Combine(fresh, $"{CacheKeys.FileName}.{Environment.ProcessId}.tmp"), victim);
        using (var cache = CacheTestKit.Open(model, fresh, Chunk))
        {
            CacheTestKit.Greedy(model, prompt, cache);
            Assert.NotNull(cache.DiskDirectory);
        }
        Assert.Equal("precious", File.ReadAllText(victim));
        Assert.Equal(CacheSecret.KeyBytes, new FileInfo(Path.Combine(fresh, CacheKeys.FileName)).Length);
    }

    [Fact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void AKeyFileOthersCouldReadOrReplaceIsRefusedNeverUsed()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("cache");
        var prompt = CacheTestKit.Prompt(2 * Chunk + 2, seed: 89);
        using (var cache = CacheTestKit.Open(model, dir, Chunk)) CacheTestKit.Greedy(model, prompt, cache);
        var key = Path.Combine(dir, CacheKeys.FileName);
        File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.OtherRead);
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
        {
            Assert.Equal(0, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens);
            Assert.Contains(cache.Warnings, w => w.Contains("chmod 600", StringComparison.Ordinal));
        }
        File.SetUnixFileMode(key, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
            Assert.Equal(2 * Chunk, CacheTestKit.Greedy(model, prompt, cache).Restore.RestoredTokens);
    }

    [Fact]
    public void DamageFoundOnDiskIsInTheCachesWarningsNotOnlyInTheLog()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        var dir = _temp.Sub("damaged");
        var prompt = CacheTestKit.Prompt(3 * Chunk + 2, seed: 91);
        using (var cache = CacheTestKit.Open(model, dir, Chunk)) CacheTestKit.Greedy(model, prompt, cache);
        var data = Directory.GetFiles(dir, StoredFormats.DataFileName, SearchOption.AllDirectories).Single();
        var bytes = File.ReadAllBytes(data);
        for (int at = 8192 + 100; at < bytes.Length; at += 1024) bytes[at] ^= 0x55;
        File.WriteAllBytes(data, bytes);
        using (var cache = CacheTestKit.Open(model, dir, Chunk))
        {
            Assert.Equal(CacheTestKit.Greedy(model, prompt, cache: null).Tokens, CacheTestKit.Greedy(model, prompt, cache).Tokens);
            Assert.Contains(cache.Warnings, w => w.Contains("failed verification", StringComparison.Ordinal));
        }
    }

    /// <summary>A /tmp-like directory (1777, owned by this root process) under a temporary directory others may enter.</summary>
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    private string WorldWritable(string name)
    {
        var dir = _temp.Sub(name);
        Directory.CreateDirectory(dir);
        File.SetUnixFileMode(_temp.Path, (UnixFileMode)0b111_101_101);
        File.SetUnixFileMode(dir, (UnixFileMode)0b111_111_111 | UnixFileMode.StickyBit);
        return dir;
    }

    [OtherUserFact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void InADirectoryEveryoneMayWriteAKeyFileAnotherUserPlantedChangesNothing()
    {
        // /tmp-like: owned by root, 1777. User 40003 plants a key file (and a pool directory name) at the top; user 40002's
        // cache lives in a subdirectory of its own and hits its entries as usual.
        var shared = WorldWritable("world-writable");
        var planted = Path.Combine(shared, CacheKeys.FileName);
        File.WriteAllBytes(planted, new byte[32]);
        ChildProcess.Output("chown", "40003:40003", planted);
        var none = new Dictionary<string, string>();
        string[] Run() => ["generate", "--model", TestPaths.Tiny, "--prompt", string.Join(' ', Enumerable.Repeat("a prompt of the owner's.", 8)), "--max-new-tokens", "2",
            "--json", "--chunk-tokens", "16", "--cache-size", "16MiB", "--cache-dir", shared, "--always-restore"];
        var first = Json(ChildProcess.ConsoleAs(40002, 40002, none, Run()));
        Assert.Empty(first.GetProperty("cache").GetProperty("warnings").EnumerateArray());
        var second = Json(ChildProcess.ConsoleAs(40002, 40002, none, Run()));
        Assert.True(second.GetProperty("cached_tokens").GetInt32() > 0, "the owner's second run did not hit its first");
        Assert.Equal((uint)40002, ChildProcess.Output("stat", "-c", "%u", Path.Combine(shared, "user-40002")) is var uid ? uint.Parse(uid) : 0);
        Assert.Equal(new byte[32], File.ReadAllBytes(planted));
    }

    [OtherUserFact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void ACacheSharedWithAGroupOnPurposeIsWrittenByEveryMemberAndByNobodyElse()
    {
        // Two users of one group (uid 40001 and 40002, gid 40000) share a cache created by the first; a third user
        // outside the group (uid 40003) cannot use it; without the option the second member only reads.
        var parent = WorldWritable("shared");
        var dir = Path.Combine(parent, "cache");
        var none = new Dictionary<string, string>();
        string[] Run(string prompt, params string[] more) =>
            ["generate", "--model", TestPaths.Tiny, "--prompt", prompt, "--max-new-tokens", "4", "--json", "--chunk-tokens", "16", "--cache-size", "16MiB", "--cache-dir", dir, .. more];
        var first = string.Join(' ', Enumerable.Repeat("shared system prompt for the whole team.", 8));
        var second = string.Join(' ', Enumerable.Repeat("another prompt the second member computes.", 8));

        Assert.Equal(0, Json(ChildProcess.ConsoleAs(40001, 40000, none, Run(first, "--share-with-group"))).GetProperty("cached_tokens").GetInt32());
        var member = Json(ChildProcess.ConsoleAs(40002, 40000, none, Run(first, "--share-with-group")));
        Assert.True(member.GetProperty("cached_tokens").GetInt32() > 0, "the second member did not hit the first's entries");
        Assert.Empty(member.GetProperty("cache").GetProperty("warnings").EnumerateArray());
        Json(ChildProcess.ConsoleAs(40002, 40000, none, Run(second, "--share-with-group")));
        Assert.True(Json(ChildProcess.ConsoleAs(40001, 40000, none, Run(second, "--share-with-group"))).GetProperty("cached_tokens").GetInt32() > 0,
            "the first member did not hit what the second wrote");

        foreach (var directory in Directory.GetDirectories(dir, "*", SearchOption.AllDirectories).Prepend(dir))
            Assert.True((File.GetUnixFileMode(directory) & (UnixFileMode)0b111_111_111) == (UnixFileMode)0b111_111_000, $"{directory} is {File.GetUnixFileMode(directory)}");
        foreach (var file in Directory.GetFiles(dir, "*", SearchOption.AllDirectories))
            Assert.True(File.GetUnixFileMode(file) == (UnixFileMode)0b110_110_000, $"{file} is {File.GetUnixFileMode(file)}");

        var notShared = Json(ChildProcess.ConsoleAs(40002, 40000, none, Run(first)));
        Assert.Contains(notShared.GetProperty("cache").GetProperty("warnings").EnumerateArray(), w => w.GetString()!.Contains("belongs to user 40001", StringComparison.Ordinal));
        var outsider = Json(ChildProcess.ConsoleAs(40003, 40003, none, Run(first, "--share-with-group")));
        Assert.Equal(0, outsider.GetProperty("cached_tokens").GetInt32());
        Assert.NotEmpty(outsider.GetProperty("cache").GetProperty("warnings").EnumerateArray());
    }

    /// <summary>Stores both prompts in the cache in <paramref name="dir"/>; the keys of their chunk <paramref name="chunk"/>, the data file and the identity.</summary>
    private static (ChunkKey Victim, ChunkKey Other, string DataFile, SlotPoolIdentity Identity) StoreTwoPrompts(KvModel model, string dir, int[] victim, int[] other, int chunk)
    {
        using var cache = CacheTestKit.Open(model, dir, Chunk);
        CacheTestKit.Greedy(model, victim, cache);
        CacheTestKit.Greedy(model, other, cache);
        return (cache.Chain.Keys(victim)[chunk], cache.Chain.Keys(other)[chunk], Path.Combine(cache.DiskDirectory!, StoredFormats.DataFileName), cache.Identity);
    }

    /// <summary>Where the slot whose header names <paramref name="key"/> starts.</summary>
    private static long SlotStart(string data, ChunkKey key, long slotBytes)
    {
        var bytes = File.ReadAllBytes(data);
        var needle = new byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(needle, key.Value);
        for (int at = bytes.AsSpan().IndexOf(needle); at >= 0;)
        {
            long slotStart = StoredFormats.FileHeaderBytes + (at - StoredFormats.FileHeaderBytes) / slotBytes * slotBytes;
            if (at - slotStart == StoredFormats.SlotHeader.Key) return slotStart;
            int next = bytes.AsSpan(at + 1).IndexOf(needle);
            at = next < 0 ? -1 : at + 1 + next;
        }
        throw new InvalidOperationException($"No slot header names {key} in {data}.");
    }

    /// <summary>How many places in the files under <paramref name="directory"/> hold two consecutive token ids of <paramref name="prompt"/> (u32 little-endian).</summary>
    private static int TokenRunsIn(string directory, int[] prompt)
    {
        int found = 0;
        foreach (var file in Directory.GetFiles(directory, "*", SearchOption.AllDirectories))
        {
            var bytes = File.ReadAllBytes(file);
            for (int i = 0; i + 1 < prompt.Length; i++)
                if (bytes.AsSpan().IndexOf(TokenBytes.AsLittleEndian(prompt.AsSpan(i, 2), new byte[8]).ToArray()) >= 0) found++;
        }
        return found;
    }

    public void Dispose() => _temp.Dispose();
}
