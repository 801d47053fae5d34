using System.Security.Cryptography;

namespace OrtKvTier.Security;

/// <summary>
/// Where the cache's secret key comes from: given by the application, the <see cref="EnvironmentVariable"/>, or the
/// <see cref="FileName"/> file in the cache directory, created at first use (32 random bytes, owner-only). A key file
/// that others could read or replace (a link, another owner, group or other permissions) is refused: whoever
/// planted it could forge entries. A cache shared with a group on purpose trusts the group: its key file is 0660
/// and may belong to any member.
/// </summary>
internal static class CacheKeys
{
    public const string FileName = "cache.key";
    public const string EnvironmentVariable = "ORTKV_CACHE_KEY";

    /// <summary>The key from <paramref name="configured"/>, else the environment variable, else the key file in <paramref name="cacheDirectory"/> (created when <paramref name="create"/>).</summary>
    /// <exception cref="IOException">No key file and not <paramref name="create"/>, or the key file cannot be trusted or read.</exception>
    public static CacheSecret Resolve(byte[]? configured, string cacheDirectory, bool create, bool shareWithGroup = false) =>
        Given(configured) ?? LoadOrCreate(cacheDirectory, create, shareWithGroup);

    /// <summary>The key the application gave: <paramref name="configured"/>, else the one in <see cref="EnvironmentVariable"/>; null when neither is set.</summary>
    public static CacheSecret? Given(byte[]? configured) =>
        configured is not null ? new CacheSecret(configured)
        : Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } text ? CacheSecret.Parse(text, $"${EnvironmentVariable}") : null;

    /// <summary>The key file's key; created first (exclusively, so concurrent first uses agree) when missing and <paramref name="create"/>.</summary>
    public static CacheSecret LoadOrCreate(string cacheDirectory, bool create, bool shareWithGroup = false)
    {
        var path = Path.Combine(Path.GetFullPath(cacheDirectory), FileName);
        // The cache directory opened once (never through a link) and the key file read and made by name in it.
        using var directory = DirectoryHandle.Open(cacheDirectory, linkFreeLevels: 1, create, shareWithGroup);
        while (true)
        {
            if (directory is not null && TryLoad(directory, shareWithGroup) is { } secret) return secret;
            if (!create || directory is null)
                throw new FileNotFoundException($"There is no cache key at {path}, so no entry of this cache can be authenticated. A process that writes the cache creates it; or set ${EnvironmentVariable}.", path);
            var temporary = $"{FileName}.{Environment.ProcessId}.tmp";
            using (var file = directory.CreateFresh(temporary, shareWithGroup))
            {
                RandomAccess.Write(file, RandomNumberGenerator.GetBytes(CacheSecret.KeyBytes), 0);
                RandomAccess.FlushToDisk(file);
            }
            try
            {
                directory.MoveNew(temporary, FileName); // link(2): fails when another process created it first
                directory.Sync();
            }
            catch (IOException) when (directory.Find(FileName) is not null)
            {
                directory.Delete(temporary);
            }
        }
    }

    private static CacheSecret? TryLoad(DirectoryHandle directory, bool shareWithGroup)
    {
        var path = directory.PathOf(FileName);
        byte[] bytes;
        try
        {
            using var file = directory.OpenFile(FileName, PrivateFiles.Access.Read);
            if (!OperatingSystem.IsWindows())
            {
                if (!shareWithGroup && PrivateFiles.OwnerOf(file) is { } owner && owner != PrivateFiles.CurrentUser)
                    throw new IOException($"The cache key {path} belongs to user {owner}, not to this process's user {PrivateFiles.CurrentUser}: whoever planted it could forge entries. Remove it (a new key is made) or set ${EnvironmentVariable}.");
                var mode = File.GetUnixFileMode(file);
                var forbidden = UnixFileMode.OtherRead | UnixFileMode.OtherWrite | (shareWithGroup ? 0 : UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
                if ((mode & forbidden) != 0)
                    throw new IOException($"The cache key {path} has mode {Convert.ToString((int)mode, 8)}: others can read or replace it. Run `chmod 600 {path}`, or remove it (a new key is made and the entries written under the old one become misses).");
            }
            bytes = new byte[Math.Min(RandomAccess.GetLength(file), 4096)];
            bytes = bytes[..RandomAccess.Read(file, bytes, 0)];
        }
        catch (FileNotFoundException)
        {
            return null; // none yet: make one
        }
        if (bytes.Length < CacheSecret.MinKeyBytes)
            throw new IOException($"The cache key {path} holds {bytes.Length} bytes, expected {CacheSecret.KeyBytes}. Remove it; a new key is made (entries written under the old one become misses).");
        return new CacheSecret(bytes);
    }
}
