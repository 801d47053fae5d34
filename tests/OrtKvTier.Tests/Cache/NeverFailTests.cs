using System.Text.Json;
using OrtKvTier.Cache;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Security;
using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;
using static OrtKvTier.Tests.Support.RunOutput;

namespace OrtKvTier.Tests.Cache;

/// <summary>
/// The cache never fails a request: with a cache directory that is a file, that another user can only read, or
/// on a full filesystem, <c>generate</c> gives the same tokens as <c>--no-cache</c>, says what it degraded around
/// in <c>cache.warnings</c>, and serves what it can read. Real files, a real tmpfs, a real other uid.
/// </summary>
public sealed class NeverFailTests : IDisposable
{
    private readonly TempDir _temp = new();
    private static readonly string Prompt = string.Join(' ', Enumerable.Repeat("The quick brown fox jumps over the lazy dog.", 6));

    private static string[] Generate(params string[] more) =>
        ["generate", "--prompt", Prompt, "--max-new-tokens", "8", "--json", "--chunk-tokens", "16", "--cache-size", "16MiB", .. more];


    private static string Tokens(JsonElement json) => json.GetProperty("tokens").ToString();

    private static string[] Warnings(JsonElement json) => [.. json.GetProperty("cache").GetProperty("warnings").EnumerateArray().Select(w => w.GetString()!)];

    [Fact]
    public void AFileGivenAsTheCacheDirectoryLeavesTheDiskOffAndTheTokensUnchanged()
    {
        var file = _temp.Sub("not-a-directory");
        File.WriteAllText(file, "something else");
        var reference = Json(ChildProcess.Console(Generate("--no-cache")));
        var run = Json(ChildProcess.Console(Generate("--cache-dir", file)));
        Assert.Equal(Tokens(reference), Tokens(run));
        Assert.Equal(0, run.GetProperty("cached_tokens").GetInt32());
        Assert.Contains(Warnings(run), w => w.Contains(file, StringComparison.Ordinal) && w.Contains("--cache-dir", StringComparison.Ordinal));
        Assert.Equal("something else", File.ReadAllText(file));
    }

    [OtherUserFact]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public void ACacheAnotherUserCanOnlyReadIsServedReadOnly()
    {
        // 1. Root fills a cache. 2. Everything is made readable, nothing writable. 3. Another uid, given the cache's key
        // (as a deployment shares it: ORTKV_CACHE_KEY), generates from it.
        var dir = _temp.Sub("shared-cache");
        var reference = Json(ChildProcess.Console(Generate("--no-cache")));
        Assert.Equal(Tokens(reference), Tokens(Json(ChildProcess.Console(Generate("--cache-dir", dir)))));
        File.SetUnixFileMode(_temp.Path, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        foreach (var d in Directory.GetDirectories(dir, "*", SearchOption.AllDirectories).Prepend(dir))
            File.SetUnixFileMode(d, UnixFileMode.UserRead | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        foreach (var f in Directory.GetFiles(dir, "*", SearchOption.AllDirectories))
            File.SetUnixFileMode(f, UnixFileMode.UserRead | UnixFileMode.GroupRead | UnixFileMode.OtherRead);

        var key = new Dictionary<string, string> { ["ORTKV_CACHE_KEY"] = Convert.ToHexString(File.ReadAllBytes(Path.Combine(dir, CacheKeys.FileName))) };
        var run = Json(ChildProcess.ConsoleAs(65534, key, Generate("--cache-dir", dir)));
        Assert.Equal(Tokens(reference), Tokens(run));
        Assert.True(run.GetProperty("cached_tokens").GetInt32() > 0, "the readable cache was not served");
        Assert.Contains(Warnings(run), w => w.Contains("read-only", StringComparison.Ordinal));

        // Without the key the other user cannot use root's key file (not theirs): misses, never an error.
        var keyless = Json(ChildProcess.ConsoleAs(65534, Generate("--cache-dir", dir)));
        Assert.Equal(Tokens(reference), Tokens(keyless));
        Assert.Equal(0, keyless.GetProperty("cached_tokens").GetInt32());
    }

    [TmpfsFact]
    public void AFullFilesystemStopsTheDiskFromGrowingAndEveryRequestCompletes()
    {
        using var small = new Tmpfs(_temp.Sub("small"), "32k"); // the prompt's chunks take more than that
        var reference = Json(ChildProcess.Console(Generate("--no-cache")));
        for (int request = 0; request < 3; request++)
        {
            var run = Json(ChildProcess.Console(Generate("--cache-dir", small.Path)));
            Assert.Equal(Tokens(reference), Tokens(run));
            Assert.Contains(Warnings(run), w => w.Contains(small.Path, StringComparison.Ordinal));
        }
    }

    [Fact]
    public void ProcessesStartedTogetherOnANewCacheDirectoryAllCompleteWithTheSameTokens()
    {
        var dir = _temp.Sub("new-cache");
        var reference = Tokens(Json(ChildProcess.Console(Generate("--no-cache"))));
        var runs = Enumerable.Range(0, 6).Select(_ => Task.Run(() => ChildProcess.Console(Generate("--cache-dir", dir)))).ToArray();
        Task.WaitAll(runs);
        foreach (var run in runs)
        {
            var json = Json(run.Result);
            Assert.Equal(reference, Tokens(json));
            Assert.DoesNotContain(Warnings(json), w => w.Contains("is off", StringComparison.Ordinal)); // the disk was served to every process
        }
    }

    [Fact]
    public void AJournalRecordWithAWrongLengthIsAMissNeverAnExceptionAndVerifyDropsIt()
    {
        var options = new SlotPoolOptions { Directory = _temp.Sub("pool"), Identity = TestPayloads.Identity, CapacitySlots = 8 };
        var key = TestPayloads.Key(1, 1);
        using (var pool = SlotPool.Open(options)) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        var index = new SlotIndex(8);
        foreach (var entry in JournalOf(options.Directory).ReadSnapshot(File.ReadAllBytes(Path.Combine(options.Directory, StoredFormats.SnapshotFileName)), PoolIdOf(options.Directory))!.Value.Entries)
            index.Put(entry);
        Assert.True(index.TryGet(key, out var stored));
        var forged = stored with { PayloadLength = 12345 };
        // A well-formed record that says the wrong length, appended after the clean close's empty journal.
        File.AppendAllBytes(Path.Combine(options.Directory, StoredFormats.JournalFileName), JournalOf(options.Directory).Put(forged));
        using (var pool = SlotPool.Open(options with { ReadOnly = true }))
        {
            Assert.False(pool.TryGet(key, TestPayloads.Tokens(key), new byte[pool.PayloadCapacity], out _));
            Assert.Equal(1, pool.GetStats().Damaged);
        }
        using (var pool = SlotPool.Open(options with { ReadOnly = true }))
            Assert.Equal(1, pool.Verify().Dropped);
    }

    [Fact]
    public void JournalRecordsThatDoNotFitAreSkippedAndReported()
    {
        var options = new SlotPoolOptions { Directory = _temp.Sub("pool"), Identity = TestPayloads.Identity, CapacitySlots = 8 };
        var key = TestPayloads.Key(2, 1);
        using (var pool = SlotPool.Open(options)) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        var journal = Path.Combine(options.Directory, StoredFormats.JournalFileName);
        File.AppendAllBytes(journal, JournalOf(options.Directory).Put(new SlotEntry(TestPayloads.Key(2, 2), Slot: 999, Generation: 1, TokenCount: 32, PayloadLength: 10)));
        using var reader = SlotPool.Open(options with { ReadOnly = true });
        Assert.Equal(1, reader.GetStats().SkippedRecords);
        Assert.Equal(1, reader.Verify().SkippedRecords);
        Assert.True(reader.TryGet(key, TestPayloads.Tokens(key), new byte[reader.PayloadCapacity], out _)); // what fits is served
    }

    [Fact]
    public void HitsFromHostMemoryKeepTheirDiskEntriesFromBeingEvictedFirst()
    {
        using var model = KvModel.Load(TestPaths.Tiny);
        using var tokenizer = new ModelTokenizer(TestPaths.Tiny);
        var options = new PrefixCacheOptions { Directory = _temp.Sub("cache"), ChunkTokens = 16, AlwaysRestore = true };
        long slotBytes = SlotPoolIdentity.For(model.Fingerprint, model.Layout, 16).SlotBytes;
        options = options with { DiskCapacityBytes = StoredFormats.FileHeaderBytes + 12 * slotBytes }; // 12 slots
        var system = tokenizer.Encode(string.Join(' ', Enumerable.Repeat("You are a helpful assistant.", 12)))[..66]; // 4 chunks + 2
        ChunkKey[] systemKeys;
        using (var cache = PrefixCache.Open(model, options))
        {
            systemKeys = cache.Chain.Keys(system);
            Capture(model, cache, system);
            for (int other = 0; other < 6; other++)
            {
                var prompt = CacheTestKit.Prompt(34, seed: 100 + other); // 2 chunks each: 12 more chunks than fit beside the system prompt
                Capture(model, cache, prompt);
                Capture(model, cache, system); // served from host memory every time
                cache.Flush();
            }
            Assert.All(systemKeys, k => Assert.True(cache.Disk!.Contains(k), $"the system prompt's chunk {k} was evicted from disk"));
        }
    }

    /// <summary>The journal codec of a pool, under the key its cache directory holds (what an attacker with the key could write).</summary>
    private static JournalCodec JournalOf(string poolDirectory) => new(CacheKeys.LoadOrCreate(Path.GetDirectoryName(poolDirectory)!, create: false));

    private static ulong PoolIdOf(string directory) => SlotFile.ReadHeaderOf(new FileMedium(directory)).PoolId;

    private static void Capture(KvModel model, PrefixCache cache, int[] prompt)
    {
        using var generator = new OrtKvTier.Generation.KvGenerator(model, cache: cache);
        generator.AppendTokens(prompt);
        generator.CaptureToCache();
    }

    public void Dispose() => _temp.Dispose();
}
