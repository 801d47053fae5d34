namespace OrtKvTier.Storage;

/// <summary>
/// How a pool creates and opens its files so they cannot be hijacked: directories 0700 and files 0600 whatever the
/// umask (others cannot read the KV or plant entries), temporaries created exclusively, and no symbolic link followed
/// inside a pool directory (a planted link could redirect a write onto another file). A cache shared by a group on
/// purpose (<c>ShareWithGroup</c>) has directories 0770; a file takes its directory's choice (0660 in a group
/// directory), so every process that shares it creates files the group can use.
/// </summary>
internal static class PoolFiles
{
    private const UnixFileMode OwnerFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    private const UnixFileMode OwnerDirectory = OwnerFile | UnixFileMode.UserExecute;
    private const UnixFileMode GroupFile = OwnerFile | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;
    private const UnixFileMode GroupDirectory = OwnerDirectory | UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute;

    /// <summary>Creates <paramref name="directory"/> (and its parents) owner-only, or group-shared, where it is missing; an existing one is left as it is.</summary>
    public static void CreateDirectory(string directory, bool shareWithGroup = false)
    {
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(directory);
            return;
        }
        if (Directory.Exists(directory)) return;
        var mode = shareWithGroup ? GroupDirectory : OwnerDirectory;
        Directory.CreateDirectory(directory, mode);
        if (shareWithGroup) File.SetUnixFileMode(directory, mode); // the umask may have taken group bits away
    }

    /// <summary>Whether files in <paramref name="directory"/> are shared with its group (the directory is group-writable).</summary>
    public static bool SharedWithGroup(string directory) =>
        !OperatingSystem.IsWindows() && Directory.Exists(directory) && (File.GetUnixFileMode(directory) & UnixFileMode.GroupWrite) != 0;

    /// <summary>Throws when <paramref name="path"/> is a symbolic link (a missing path is fine).</summary>
    public static void RefuseLink(string path)
    {
        if (new FileInfo(path).LinkTarget is { } target)
            throw new IOException($"{path} is a symbolic link (to {target}); a slot pool never follows one. Remove it, or give the cache a directory of its own.");
    }

    /// <summary>Opens <paramref name="path"/>, creating it with its directory's mode when missing; never through a link.</summary>
    public static FileStream OpenOrCreate(string path, FileAccess access, FileShare share)
    {
        RefuseLink(path);
        return Created(path, new FileStream(path, Private(path, new FileStreamOptions { Mode = FileMode.OpenOrCreate, Access = access, Share = share })));
    }

    /// <summary>
    /// Creates <paramref name="path"/> exclusively after removing whatever is there (a stale temporary or a planted link,
    /// not its target), with its directory's mode, or the one <paramref name="shareWithGroup"/> says.
    /// </summary>
    public static FileStream CreateFresh(string path, long preallocate = 0, bool? shareWithGroup = null)
    {
        SlotFile.TryDelete(path);
        return Created(path, new FileStream(path, Private(path, new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.ReadWrite, Share = FileShare.None, PreallocationSize = preallocate }, shareWithGroup)), shareWithGroup);
    }

    private static FileStreamOptions Private(string path, FileStreamOptions options, bool? shareWithGroup = null)
    {
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = FileModeIn(path, shareWithGroup);
        return options;
    }

    private static UnixFileMode FileModeIn(string path, bool? shareWithGroup) =>
        shareWithGroup ?? SharedWithGroup(Path.GetDirectoryName(Path.GetFullPath(path))!) ? GroupFile : OwnerFile;

    /// <summary>A group file gets its group bits back from the umask (only its owner may change its mode).</summary>
    private static FileStream Created(string path, FileStream stream, bool? shareWithGroup = null)
    {
        if (!OperatingSystem.IsWindows() && FileModeIn(path, shareWithGroup) == GroupFile && (File.GetUnixFileMode(stream.SafeFileHandle) & GroupFile) != GroupFile)
            try { File.SetUnixFileMode(stream.SafeFileHandle, GroupFile); }
            catch (UnauthorizedAccessException) { } // another member's file: theirs to fix
        return stream;
    }
}
