namespace OrtKvTier.Storage;

/// <summary>
/// How a pool creates and opens its files so they cannot be hijacked: directories 0700 and files 0600 (others
/// cannot read the KV or plant entries), temporaries created exclusively, and no symbolic link followed inside a
/// pool directory (a planted link could redirect a write onto another file).
/// </summary>
internal static class PoolFiles
{
    private const UnixFileMode PrivateFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private const UnixFileMode PrivateDirectory = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    /// <summary>Creates <paramref name="directory"/> (and its parents) owner-only where it is missing.</summary>
    public static void CreateDirectory(string directory)
    {
        if (OperatingSystem.IsWindows()) Directory.CreateDirectory(directory);
        else Directory.CreateDirectory(directory, PrivateDirectory);
    }

    /// <summary>Throws when <paramref name="path"/> is a symbolic link (a missing path is fine).</summary>
    public static void RefuseLink(string path)
    {
        if (new FileInfo(path).LinkTarget is { } target)
            throw new IOException($"{path} is a symbolic link (to {target}); a slot pool never follows one. Remove it, or give the cache a directory of its own.");
    }

    /// <summary>Opens <paramref name="path"/>, creating it owner-only when missing; never through a link.</summary>
    public static FileStream OpenOrCreate(string path, FileAccess access, FileShare share)
    {
        RefuseLink(path);
        return new FileStream(path, Private(new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = access, Share = share }));
    }

    /// <summary>Creates <paramref name="path"/> exclusively, owner-only, after removing whatever is there (a stale temporary or a planted link, not its target).</summary>
    public static FileStream CreateFresh(string path, long preallocate = 0)
    {
        SlotFile.TryDelete(path);
        return new FileStream(path, Private(new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None, PreallocationSize = preallocate }));
    }

    private static FileStreamOptions Private(FileStreamOptions options)
    {
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = PrivateFile;
        return options;
    }
}
