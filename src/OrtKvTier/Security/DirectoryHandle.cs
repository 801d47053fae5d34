using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using static OrtKvTier.Security.PrivateFiles;

namespace OrtKvTier.Security;

/// <summary>
/// An open directory of the cache. The files in it are opened, created, renamed, removed and listed by name relative
/// to it (<c>openat</c>, <c>renameat</c>, <c>unlinkat</c>, <c>statx</c>), so once it is open nothing a neighbour does to
/// its path (the directory renamed away and a link to somewhere else put in its place) sends the cache anywhere else.
/// Opening it follows no link at its last <c>linkFreeLevels</c> path components (a pool's directory and the cache
/// directory holding it): each is opened with <c>O_NOFOLLOW</c> relative to the one before, and a link there is refused
/// naming it. The components above are the user's own path and resolve as usual. Where the OS has no directory
/// handles (not Linux) the names resolve through the path, after a link check.
/// </summary>
internal sealed partial class DirectoryHandle : IDisposable
{
    private readonly SafeFileHandle? _fd;
    private readonly bool _sharedWithGroup;

    private DirectoryHandle(string path, SafeFileHandle? fd, bool sharedWithGroup)
    {
        Path = path;
        _fd = fd;
        _sharedWithGroup = sharedWithGroup;
    }

    /// <summary>The directory's path, for messages.</summary>
    public string Path { get; }

    /// <summary>The path of <paramref name="name"/> in the directory, for messages.</summary>
    public string PathOf(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>
    /// Opens the directory at <paramref name="path"/>, following no link at its last <paramref name="linkFreeLevels"/>
    /// components; with <paramref name="create"/> the missing ones are made first (owner-only, or group-shared with
    /// <paramref name="shareWithGroup"/>, whatever the umask). Null when it does not exist (and not <paramref name="create"/>).
    /// </summary>
    /// <exception cref="IOException">One of those components is a link or not a directory, or it cannot be opened; the message names it.</exception>
    public static DirectoryHandle? Open(string path, int linkFreeLevels, bool create = false, bool shareWithGroup = false)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(path);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(linkFreeLevels);
        var full = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(path));
        var anchor = full;
        var names = new Stack<string>();
        while (names.Count < linkFreeLevels && System.IO.Path.GetDirectoryName(anchor) is { } parent)
        {
            names.Push(System.IO.Path.GetFileName(anchor));
            anchor = parent;
        }
        if (create) CreateDirectory(anchor, shareWithGroup);
        return NativeOpen.Supported ? OpenNative(full, anchor, names, create, shareWithGroup) : OpenByPath(full, anchor, names, create, shareWithGroup);
    }

    private static DirectoryHandle? OpenNative(string full, string anchor, Stack<string> names, bool create, bool shareWithGroup)
    {
        var mode = shareWithGroup ? GroupDirectory : OwnerDirectory;
        int fd = openat(NativeOpen.CurrentDirectory, anchor, DirectoryFlags & ~NativeOpen.NoFollow, 0);
        if (fd < 0) return Marshal.GetLastPInvokeError() == NativeOpen.ENOENT ? null : throw DirectoryFailure(anchor, Marshal.GetLastPInvokeError());
        var at = anchor;
        foreach (var name in names)
        {
            at = System.IO.Path.Combine(at, name);
            bool made = create && mkdirat(fd, name, (int)mode) == 0;
            if (create && !made && Marshal.GetLastPInvokeError() is var why && why != NativeOpen.EEXIST)
            {
                _ = close(fd);
                throw DirectoryFailure(at, why);
            }
            int child = openat(fd, name, DirectoryFlags, 0);
            int errno = Marshal.GetLastPInvokeError();
            var kind = child < 0 && errno == NativeOpen.ENOTDIR ? PrivateFiles.Statx.Of(fd, name)?.Kind : null;
            _ = close(fd);
            if (child < 0)
                return errno == NativeOpen.ENOENT ? null
                    : kind == "a symbolic link" || errno == NativeOpen.ELOOP ? throw LinkRefused(at)
                    : throw DirectoryFailure(at, errno, kind);
            if (made) _ = fchmod(child, (int)mode); // the umask may have taken bits away
            fd = child;
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        bool group = PrivateFiles.Statx.OfHandle(handle) is { } status && (status.Permissions & UnixFileMode.GroupWrite) != 0;
        return new DirectoryHandle(full, handle, group);
    }

    private static DirectoryHandle? OpenByPath(string full, string anchor, Stack<string> names, bool create, bool shareWithGroup)
    {
        var at = anchor;
        foreach (var name in names) RefuseLink(at = System.IO.Path.Combine(at, name));
        if (create) CreateDirectory(full, shareWithGroup);
        return Directory.Exists(full) ? new DirectoryHandle(full, null, PrivateFiles.SharedWithGroup(full)) : null;
    }

    private static int DirectoryFlags => NativeOpen.ReadOnly | NativeOpen.DirectoryOnly | NativeOpen.NoFollow | NativeOpen.CloseOnExec;

    private static IOException DirectoryFailure(string path, int errno, string? kind = null) => errno switch
    {
        NativeOpen.ENOTDIR => new IOException($"{path} is not a directory ({kind ?? "a link or a file, gone again by the time it was looked at"}); the cache keeps its files in a directory of its own. Remove it, or give the cache another directory."),
        NativeOpen.EACCES or NativeOpen.EPERM => new IOException($"Access to the directory {path} is denied (errno {errno}). Give the cache a directory this user can write (--cache-dir, ORTKV_CACHE_DIR).", new UnauthorizedAccessException()),
        NativeOpen.EROFS => new ReadOnlyFileSystemException(path),
        _ => new IOException($"Could not open the directory {path}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).", errno),
    };

    /// <summary>
    /// Opens the regular file <paramref name="name"/>, never through a link and never blocking on a FIFO; a file created
    /// here gets the directory's mode (owner-only, or group for a group directory) unless <paramref name="shareWithGroup"/> says.
    /// </summary>
    /// <exception cref="FileNotFoundException">Absent (<see cref="Access.Read"/>, <see cref="Access.ReadWrite"/>).</exception>
    /// <exception cref="IOException">A link, not a regular file, a second name of another file (when writing), or any other failure, naming the path.</exception>
    public SafeFileHandle OpenFile(string name, Access access, bool? shareWithGroup = null)
    {
        bool group = shareWithGroup ?? _sharedWithGroup;
        var handle = _fd is null ? PortableOpen(PathOf(name), access, group) : WithFd(fd => NativeOpen.Open(fd, name, PathOf(name), access, group ? GroupFile : OwnerFile));
        try
        {
            if (group && access is Access.CreateOrOpen or Access.CreateNew) GiveGroupBits(handle);
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Creates <paramref name="name"/> exclusively after removing whatever is there (a stale temporary or a planted link, not its target).</summary>
    public SafeFileHandle CreateFresh(string name, bool? shareWithGroup = null)
    {
        Delete(name);
        return OpenFile(name, Access.CreateNew, shareWithGroup);
    }

    /// <summary>Removes the file <paramref name="name"/> (a link itself, never its target); true when nothing is there now.</summary>
    public bool Delete(string name)
    {
        if (_fd is null) return TryDeleteByPath(PathOf(name));
        return WithFd(fd => unlinkat(fd, name, 0) == 0 || Marshal.GetLastPInvokeError() == NativeOpen.ENOENT);
    }

    private static bool TryDeleteByPath(string path)
    {
        try
        {
            File.Delete(path);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Puts the file <paramref name="from"/> in place of whatever is at <paramref name="to"/>, atomically.</summary>
    public void Replace(string from, string to)
    {
        if (_fd is null)
        {
            File.Move(PathOf(from), PathOf(to), overwrite: true);
            return;
        }
        if (WithFd(fd => renameat(fd, from, fd, to)) != 0) throw NativeOpen.Failure(PathOf(from), Marshal.GetLastPInvokeError());
    }

    /// <summary>Gives the file <paramref name="from"/> the name <paramref name="to"/> unless something has it already (then an <see cref="IOException"/>), and drops the name <paramref name="from"/>.</summary>
    public void MoveNew(string from, string to)
    {
        if (_fd is null) File.Move(PathOf(from), PathOf(to), overwrite: false);
        else if (WithFd(fd => linkat(fd, from, fd, to, 0)) != 0) throw NativeOpen.Failure(PathOf(to), Marshal.GetLastPInvokeError());
        Delete(from);
    }

    /// <summary>What is at <paramref name="name"/> (a link itself, never its target); null when nothing is.</summary>
    public DirectoryEntry? Find(string name)
    {
        if (_fd is not null) return WithFd(fd => PrivateFiles.Statx.Of(fd, name)) is { } s ? new DirectoryEntry(name, s.IsRegularFile, s.IsDirectory, s.Inode, s.Size, s.LastWriteUtc) : null;
        var info = new FileInfo(PathOf(name));
        if (info.LinkTarget is not null) return new DirectoryEntry(name, false, false, 0, 0, info.LastWriteTimeUtc);
        if (info.Exists) return new DirectoryEntry(name, true, false, (ulong)info.CreationTimeUtc.Ticks, info.Length, info.LastWriteTimeUtc);
        return Directory.Exists(info.FullName) ? new DirectoryEntry(name, false, true, 0, 0, Directory.GetLastWriteTimeUtc(info.FullName)) : null;
    }

    /// <summary>Everything in the directory (names sorted ordinally; links not followed).</summary>
    public IReadOnlyList<DirectoryEntry> Entries()
    {
        static List<string> NamesIn(string directory) => [.. Directory.EnumerateFileSystemEntries(directory).Select(System.IO.Path.GetFileName).OfType<string>()];
        // The kernel's name for the open directory: listing it lists the directory this handle holds, wherever its path now leads.
        var names = _fd is null ? NamesIn(Path) : WithFd(fd => $"/proc/self/fd/{fd}" is var self && Directory.Exists(self) ? NamesIn(self) : NamesIn(Path));
        return [.. names.Order(StringComparer.Ordinal).Select(Find).OfType<DirectoryEntry>()];
    }

    /// <summary>Removes the directory <paramref name="name"/> in this one when it is empty (never a link's target); false when it is not empty or cannot be removed.</summary>
    public bool RemoveEmptyDirectory(string name)
    {
        if (_fd is not null) return WithFd(fd => unlinkat(fd, name, RemoveDirectoryFlag) == 0);
        try
        {
            if (new DirectoryInfo(PathOf(name)).LinkTarget is not null) return false;
            Directory.Delete(PathOf(name));
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>fsync of the directory, so a creation or rename in it survives power loss (where the OS allows it).</summary>
    public void Sync()
    {
        if (_fd is not null) WithFd(fsync);
    }

    /// <summary>What is at a name in the directory.</summary>
    /// <param name="Name">The name.</param>
    /// <param name="IsFile">A regular file.</param>
    /// <param name="IsDirectory">A directory (not a link to one).</param>
    /// <param name="FileId">The inode (elsewhere than Linux, the creation time).</param>
    /// <param name="Length">Bytes.</param>
    /// <param name="LastWriteUtc">When it was last written.</param>
    internal sealed record DirectoryEntry(string Name, bool IsFile, bool IsDirectory, ulong FileId, long Length, DateTime LastWriteUtc);

    private T WithFd<T>(Func<int, T> call)
    {
        bool added = false;
        try
        {
            _fd!.DangerousAddRef(ref added);
            return call((int)_fd.DangerousGetHandle());
        }
        finally
        {
            if (added) _fd!.DangerousRelease();
        }
    }

    public void Dispose() => _fd?.Dispose();

    public override string ToString() => Path;

    private const int RemoveDirectoryFlag = 0x200;

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int openat(int directoryFd, string path, int flags, int mode);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int mkdirat(int directoryFd, string path, int mode);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int unlinkat(int directoryFd, string path, int flags);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int renameat(int fromDirectoryFd, string from, int toDirectoryFd, string to);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int linkat(int fromDirectoryFd, string from, int toDirectoryFd, string to, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fchmod(int fd, int mode);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fsync(int fd);

    [LibraryImport("libc")]
    private static partial int close(int fd);
}
