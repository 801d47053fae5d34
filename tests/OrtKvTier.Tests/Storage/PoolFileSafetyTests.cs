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

    public void Dispose() => _temp.Dispose();
}
