using OrtKvTier.Storage;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Storage;

/// <summary>A pool's files cannot be hijacked: owner-only modes, and no symbolic link inside a pool directory is ever followed.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
public sealed class PoolFileSafetyTests : IDisposable
{
    private readonly TempDir _temp = new();

    private SlotPoolOptions Options(string name) => new() { Directory = _temp.Sub(name), Identity = TestPayloads.Identity, CapacitySlots = 4 };

    [Fact]
    public void ThePoolDirectoryIsOwnerOnlyAndItsFilesTooFromTheStart()
    {
        var options = Options("private");
        using (var pool = SlotPool.Open(options))
        {
            var key = TestPayloads.Key(9, 1);
            pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        }
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(options.Directory));
        foreach (var file in Directory.GetFiles(options.Directory))
            Assert.True(File.GetUnixFileMode(file) == (UnixFileMode.UserRead | UnixFileMode.UserWrite), $"{Path.GetFileName(file)} is {File.GetUnixFileMode(file)}");
    }

    [Fact]
    public void ALinkPlantedAsATemporaryRedirectsNothing()
    {
        var options = Options("planted");
        using (SlotPool.Open(options)) { }
        var victim = _temp.Sub("victim.txt");
        File.WriteAllText(victim, "precious");
        File.CreateSymbolicLink(Path.Combine(options.Directory, StoredFormats.SnapshotFileName + ".tmp"), victim);
        File.CreateSymbolicLink(Path.Combine(options.Directory, StoredFormats.JournalFileName + ".tmp"), victim);
        using (var pool = SlotPool.Open(options))
        {
            var key = TestPayloads.Key(9, 2);
            pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            pool.Compact(); // writes both temporaries
        }
        Assert.Equal("precious", File.ReadAllText(victim));

        // Before the pool exists: the data file's temporary.
        var fresh = Options("fresh");
        Directory.CreateDirectory(fresh.Directory);
        File.CreateSymbolicLink(Path.Combine(fresh.Directory, StoredFormats.DataFileName + ".creating"), victim);
        using (var pool = SlotPool.Open(fresh))
        {
            var key = TestPayloads.Key(9, 3);
            pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
        }
        Assert.Equal("precious", File.ReadAllText(victim));
    }

    [Theory]
    [InlineData(StoredFormats.SnapshotFileName)]
    [InlineData(StoredFormats.DataFileName)]
    [InlineData(StoredFormats.JournalFileName)]
    [InlineData(StoredFormats.LockFileName)]
    public void APoolFileThatIsALinkIsRefusedNamingIt(string name)
    {
        var options = Options("linked");
        using (SlotPool.Open(options)) { }
        var path = Path.Combine(options.Directory, name);
        var elsewhere = _temp.Sub("elsewhere-" + name);
        if (File.Exists(path)) File.Move(path, elsewhere);
        else File.WriteAllText(elsewhere, "");
        File.CreateSymbolicLink(path, elsewhere);
        var e = Assert.ThrowsAny<IOException>(() => SlotPool.Open(options));
        Assert.Contains("symbolic link", e.Message);
        Assert.Contains(name, e.Message);
    }

    /// <summary>
    /// A neighbour who can write the cache directory renames an open pool's directory away and puts a link to their
    /// victim in its place: every file the pool writes afterwards (entries, a compaction's new journal and snapshot)
    /// lands in its own directory, wherever that now is, and the victim is unchanged.
    /// </summary>
    [Fact]
    public void APoolDirectorySwappedForALinkWhileOpenWritesOnlyIntoItself()
    {
        var options = Options("swapped") with { CapacitySlots = 8 };
        var victim = TreeHash.Victim(_temp.Sub("victim"));
        string before = TreeHash.Of(victim);
        var moved = _temp.Sub("swapped-moved");
        var keys = Enumerable.Range(1, 4).Select(i => TestPayloads.Key(11, i)).ToList();
        using (var pool = SlotPool.Open(options))
        {
            pool.Put(keys[0], TestPayloads.Tokens(keys[0]), TestPayloads.Payload(keys[0]));
            Directory.Move(options.Directory, moved);
            File.CreateSymbolicLink(options.Directory, victim);
            foreach (var key in keys.Skip(1)) pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            pool.Compact();
            pool.Flush();
        }
        Assert.Equal(before, TreeHash.Of(victim));
        using var reopened = SlotPool.Open(options with { Directory = moved, ReadOnly = true });
        Assert.All(keys, key => Assert.True(reopened.Contains(key), $"{key} is not in the pool's own directory"));
    }

    /// <summary>
    /// `cache prune` (<see cref="SlotPool.TryDelete"/>) while a neighbour keeps swapping the pool's directory for a link
    /// to their victim and back: the victim is never touched, whichever moment the swap lands.
    /// </summary>
    [Fact]
    public void DeletingAPoolWhileItsDirectoryIsSwappedForALinkTouchesNothingOutside()
    {
        var victim = TreeHash.Victim(_temp.Sub("victim"));
        string before = TreeHash.Of(victim);
        var options = Options("pruned");
        var aside = _temp.Sub("pruned-aside");
        for (int round = 0; round < 40; round++)
        {
            using (var pool = SlotPool.Open(options))
            {
                var key = TestPayloads.Key(12, round);
                pool.Put(key, TestPayloads.Tokens(key), TestPayloads.Payload(key));
            }
            using var stop = new CancellationTokenSource();
            var swapper = Task.Run(() =>
            {
                for (int i = 0; !stop.IsCancellationRequested; i++)
                {
                    try
                    {
                        Directory.Move(options.Directory, aside);
                        File.CreateSymbolicLink(options.Directory, victim);
                        Thread.SpinWait(200 * (i % 7));
                        File.Delete(options.Directory);
                        Directory.Move(aside, options.Directory);
                    }
                    catch (IOException)
                    {
                        // the pool was deleted (or is between names): nothing to swap this time
                    }
                }
            });
            for (int attempt = 0; attempt < 5; attempt++)
            {
                try
                {
                    SlotPool.TryDelete(options.Directory);
                }
                catch (IOException e)
                {
                    // Caught while the link was in place (refused) or while the directory was between names.
                    Assert.True(e.Message.Contains("symbolic link") || e.Message.Contains("is not a directory") || e.Message.Contains("does not exist"), e.Message);
                }
            }
            stop.Cancel();
            swapper.Wait();
            if (new FileInfo(options.Directory).LinkTarget is not null) File.Delete(options.Directory);
            if (Directory.Exists(aside)) Directory.Move(aside, options.Directory);
            Assert.Equal(before, TreeHash.Of(victim));
        }
    }

    public void Dispose() => _temp.Dispose();
}
