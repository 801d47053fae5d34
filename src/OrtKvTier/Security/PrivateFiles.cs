using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace OrtKvTier.Security;

/// <summary>
/// Files and directories the cache creates and opens so that nobody else can hijack them: directories 0700 and
/// files 0600 whatever the umask (0770/0660 for a group cache), temporaries created exclusively, and no symbolic link
/// followed. On Linux a file is opened with <c>O_NOFOLLOW | O_NONBLOCK</c> and then checked to be a regular file, so a
/// planted link, FIFO, socket or device is refused naming it instead of being followed or hanging the process.
/// </summary>
internal static partial class PrivateFiles
{
    public const UnixFileMode OwnerFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;
    public const UnixFileMode OwnerDirectory = OwnerFile | UnixFileMode.UserExecute;
    public const UnixFileMode GroupFile = OwnerFile | UnixFileMode.GroupRead | UnixFileMode.GroupWrite;
    public const UnixFileMode GroupDirectory = OwnerDirectory | UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute;

    /// <summary>How to open a file.</summary>
    public enum Access { Read, ReadWrite, CreateOrOpen, CreateNew }

    /// <summary>Creates <paramref name="directory"/> and its missing parents owner-only, or group-shared, whatever the umask; an existing one is left as it is.</summary>
    public static void CreateDirectory(string directory, bool shareWithGroup = false)
    {
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(directory);
            return;
        }
        if (Directory.Exists(directory)) return;
        var mode = shareWithGroup ? GroupDirectory : OwnerDirectory;
        // One level at a time: Directory.CreateDirectory gives missing parents 0777 less the umask, which may be nothing.
        var missing = new Stack<string>();
        for (var dir = Path.GetFullPath(directory); !Directory.Exists(dir); dir = Path.GetDirectoryName(dir)!) missing.Push(dir);
        foreach (var dir in missing)
        {
            Directory.CreateDirectory(dir, mode);
            if (shareWithGroup) File.SetUnixFileMode(dir, mode); // the umask may have taken group bits away
        }
    }

    /// <summary>Whether files in <paramref name="directory"/> are shared with its group (the directory is group-writable).</summary>
    public static bool SharedWithGroup(string directory) =>
        !OperatingSystem.IsWindows() && Directory.Exists(directory) && (File.GetUnixFileMode(directory) & UnixFileMode.GroupWrite) != 0;

    /// <summary>Throws when <paramref name="path"/> is a symbolic link (a missing path is fine).</summary>
    public static void RefuseLink(string path)
    {
        if (new FileInfo(path).LinkTarget is { } target) throw LinkRefused(path, target);
    }

    /// <summary>The error for a link where the cache wanted a file or directory of its own.</summary>
    public static IOException LinkRefused(string path, string? target = null)
    {
        try
        {
            target ??= new FileInfo(path).LinkTarget;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // only for the message
        }
        return new($"{path} is a symbolic link{(target is null ? "" : $" (to {target})")}; the cache never follows one. Remove it, or give the cache the directory itself{(target is null ? "" : $" ({target})")} or one of its own.");
    }

    /// <summary>
    /// Takes the exclusive OS lock of an open file without waiting (<c>flock</c>, dropped by the kernel when the process
    /// dies or the handle closes): false when another open file description holds it.
    /// </summary>
    public static bool TryLockExclusive(SafeFileHandle handle, string path)
    {
        if (!NativeOpen.Supported) throw new PlatformNotSupportedException("TryLockExclusive needs Linux; elsewhere lock by opening with FileShare.None.");
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            if (flock((int)handle.DangerousGetHandle(), LockExclusive | LockNonBlocking) == 0) return true;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EWouldBlock) return false;
            throw new IOException($"Could not lock {path}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).", errno);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>Lets go of the lock <see cref="TryLockExclusive"/> took (the handle stays open).</summary>
    public static void Unlock(SafeFileHandle handle)
    {
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            _ = flock((int)handle.DangerousGetHandle(), LockUnlock);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>
    /// Takes an open-file-description lock (<c>F_OFD_SETLK</c>) on byte <paramref name="offset"/> of an open file, without
    /// waiting: false when another open file description holds it. Dropped when the handle closes or the process dies;
    /// two handles of one process exclude each other. Linux only (<see cref="CanLockHandles"/>).
    /// </summary>
    public static bool TryLockByte(SafeFileHandle handle, long offset) => Fcntl(handle, FOfdSetLock, offset, WriteLock) == 0 || !Busy();

    /// <summary>Whether some open file description (of any process but through another handle) holds a lock on byte <paramref name="offset"/> (or any of the <paramref name="length"/> bytes from it; 0: to the end, and beyond).</summary>
    public static bool IsByteLocked(SafeFileHandle handle, long offset, long length = 1)
    {
        var request = new FileLockRequest { Type = WriteLock, Whence = 0, Start = offset, Length = length };
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            if (fcntl((int)handle.DangerousGetHandle(), FOfdGetLock, ref request) != 0) return true; // cannot tell: assume held
            return request.Type != Unlocked;
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    private static int Fcntl(SafeFileHandle handle, int command, long offset, short type)
    {
        var request = new FileLockRequest { Type = type, Whence = 0, Start = offset, Length = 1 };
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            return fcntl((int)handle.DangerousGetHandle(), command, ref request);
        }
        finally
        {
            if (added) handle.DangerousRelease();
        }
    }

    /// <summary>After a failed lock request: true when another holder has it, else throws naming the error.</summary>
    private static bool Busy()
    {
        int errno = Marshal.GetLastPInvokeError();
        if (errno is EWouldBlock or EAccess) return true;
        throw new IOException($"Could not take a lock: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).", errno);
    }

    private const int FOfdGetLock = 36, FOfdSetLock = 37, EAccess = 13;
    private const short WriteLock = 1, Unlocked = 2;

    /// <summary>struct flock (Linux, 64-bit).</summary>
    [StructLayout(LayoutKind.Sequential)]
    private struct FileLockRequest
    {
        public short Type;
        public short Whence;
        public long Start;
        public long Length;
        public int Pid;
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fcntl(int fd, int command, ref FileLockRequest request);

    /// <summary>Whether <see cref="TryLockExclusive"/> works here (Linux); elsewhere a lock is an exclusive open.</summary>
    public static bool CanLockHandles => NativeOpen.Supported;

    private const int LockExclusive = 2, LockNonBlocking = 4, LockUnlock = 8, EWouldBlock = 11;

    /// <summary>The user id this process runs as.</summary>
    public static uint CurrentUser => OperatingSystem.IsWindows() ? 0 : geteuid();

    /// <summary>The user id that owns an open file; null where it cannot be told.</summary>
    public static uint? OwnerOf(SafeFileHandle handle) =>
        OperatingSystem.IsLinux() && Statx.OfHandle(handle) is { } status ? status.Uid : null;

    /// <summary>The user id that owns <paramref name="path"/> (a link itself, not its target); null where it cannot be told.</summary>
    public static uint? Owner(string path) =>
        OperatingSystem.IsLinux() && Statx.OfPath(path) is { } status ? status.Uid : null;

    /// <summary>The inode of an open file (Linux; elsewhere its creation time, from <paramref name="path"/>).</summary>
    public static ulong FileIdOf(SafeFileHandle handle, string path) =>
        OperatingSystem.IsLinux() && Statx.OfHandle(handle) is { } status ? status.Inode : (ulong)new FileInfo(path).CreationTimeUtc.Ticks;

    /// <summary>A group file gets its group bits back from the umask (only its owner may change its mode).</summary>
    public static void GiveGroupBits(SafeFileHandle handle)
    {
        if (OperatingSystem.IsWindows() || (File.GetUnixFileMode(handle) & GroupFile) == GroupFile) return;
        try { File.SetUnixFileMode(handle, GroupFile); }
        catch (UnauthorizedAccessException) { } // another member's file: theirs to fix
    }

    /// <summary>Opens a file through its path where there is no <see cref="NativeOpen"/> (after a link check).</summary>
    public static SafeFileHandle PortableOpen(string path, Access access, bool group)
    {
        RefuseLink(path);
        var options = new FileStreamOptions
        {
            Mode = access switch { Access.CreateNew => FileMode.CreateNew, Access.CreateOrOpen => FileMode.OpenOrCreate, _ => FileMode.Open },
            Access = access == Access.Read ? FileAccess.Read : FileAccess.ReadWrite,
            Share = FileShare.ReadWrite | FileShare.Delete,
        };
        if (!OperatingSystem.IsWindows() && access is Access.CreateNew or Access.CreateOrOpen) options.UnixCreateMode = group ? GroupFile : OwnerFile;
        return File.OpenHandle(path, options.Mode, options.Access, options.Share, FileOptions.None, 0);
    }

    /// <summary>openat(2) with O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC, then a check that it is a regular file (Linux on x64 and arm64).</summary>
    internal static class NativeOpen
    {
        public static readonly bool Supported = OperatingSystem.IsLinux() &&
            RuntimeInformation.ProcessArchitecture is Architecture.X64 or Architecture.Arm64;

        public static readonly int NoFollow = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x8000 : 0x20000;
        public static readonly int DirectoryOnly = RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x4000 : 0x10000;
        public const int CurrentDirectory = -100;
        public const int ReadOnly = 0, CloseOnExec = 0x80000;
        private const int ReadWrite = 2, Create = 0x40, Exclusive = 0x80, NoControllingTerminal = 0x100, NonBlocking = 0x800;
        public const int ENOENT = 2, EEXIST = 17, ELOOP = 40, ENOTDIR = 20, ENXIO = 6, EROFS = 30, EACCES = 13, EPERM = 1;

        /// <summary>Opens <paramref name="name"/> in the directory <paramref name="directoryFd"/> (<see cref="CurrentDirectory"/>: a path); <paramref name="path"/> names it in messages.</summary>
        public static SafeFileHandle Open(int directoryFd, string name, string path, Access access, UnixFileMode mode)
        {
            int flags = (access == Access.Read ? ReadOnly : ReadWrite) | NoFollow | NonBlocking | CloseOnExec | NoControllingTerminal |
                access switch { Access.CreateNew => Create | Exclusive, Access.CreateOrOpen => Create, _ => 0 };
            int fd = openat(directoryFd, name, flags, (int)mode);
            if (fd < 0) throw Failure(path, Marshal.GetLastPInvokeError());
            var handle = new SafeFileHandle(fd, ownsHandle: true);
            if (Statx.OfHandle(handle) is not { } status || !status.IsRegularFile)
            {
                handle.Dispose();
                throw new IOException($"{path} is not a regular file ({Statx.Of(directoryFd, name)?.Kind ?? "unknown"}); the cache opens nothing else. Remove it, or give the cache a directory of its own.");
            }
            // A file the cache writes has one name: a hard link planted there could be another file's second name.
            if (access != Access.Read && status.Links > 1)
            {
                handle.Dispose();
                throw new IOException($"{path} has {status.Links} names (a hard link): the cache writes no file that has another name. Remove it, or give the cache a directory of its own.");
            }
            return handle;
        }

        public static Exception Failure(string path, int errno) => errno switch
        {
            ENOENT => new FileNotFoundException($"{path} does not exist.", path),
            ELOOP => LinkRefused(path),
            ENXIO => new IOException($"{path} is not a regular file (a FIFO or socket); the cache opens nothing else. Remove it, or give the cache a directory of its own."),
            EEXIST => new IOException($"{path} already exists (created by another process at the same moment).", errno),
            EROFS => new ReadOnlyFileSystemException(path),
            EACCES or EPERM => new UnauthorizedAccessException($"Access to {path} is denied (errno {errno})."),
            _ => new IOException($"Could not open {path}: {Marshal.GetPInvokeErrorMessage(errno)} (errno {errno}).", errno),
        };
    }

    /// <summary>statx(2): the few fields the cache reads (Linux; the struct's layout is the same on every architecture).</summary>
    internal static partial class Statx
    {
        private const int AtSymlinkNoFollow = 0x100, AtEmptyPath = 0x1000;
        private const uint WantType = 0x1, WantMode = 0x2, WantLinks = 0x4, WantUid = 0x8, WantModified = 0x40, WantIno = 0x100, WantSize = 0x200;

        public static Status? OfPath(string path) => Of(NativeOpen.CurrentDirectory, path);

        /// <summary>What is at <paramref name="name"/> in the directory <paramref name="directoryFd"/>, the link itself where it is one; null when absent.</summary>
        public static Status? Of(int directoryFd, string name)
        {
            var buffer = new StatxBuffer();
            return statx(directoryFd, name, AtSymlinkNoFollow, WantType | WantMode | WantUid | WantModified | WantIno | WantSize, ref buffer) == 0 ? new Status(buffer) : null;
        }

        public static Status? OfHandle(SafeFileHandle handle)
        {
            var buffer = new StatxBuffer();
            bool added = false;
            try
            {
                handle.DangerousAddRef(ref added);
                return statx((int)handle.DangerousGetHandle(), "", AtEmptyPath, WantType | WantMode | WantLinks | WantUid | WantIno | WantSize, ref buffer) == 0 ? new Status(buffer) : null;
            }
            finally
            {
                if (added) handle.DangerousRelease();
            }
        }

        [StructLayout(LayoutKind.Explicit, Size = 256)]
        public struct StatxBuffer
        {
            [FieldOffset(16)] public uint Links;
            [FieldOffset(20)] public uint Uid;
            [FieldOffset(28)] public ushort Mode;
            [FieldOffset(32)] public ulong Inode;
            [FieldOffset(40)] public ulong Size;
            [FieldOffset(112)] public long ModifiedSeconds;
            [FieldOffset(120)] public uint ModifiedNanoseconds;
        }

        public readonly struct Status(StatxBuffer buffer)
        {
            public uint Uid => buffer.Uid;
            public uint Links => buffer.Links;
            public ulong Inode => buffer.Inode;
            public long Size => (long)buffer.Size;
            private int Type => buffer.Mode & 0xF000;
            public bool IsRegularFile => Type == 0x8000;
            public bool IsDirectory => Type == 0x4000;
            public UnixFileMode Permissions => (UnixFileMode)(buffer.Mode & 0xFFF);
            public DateTime LastWriteUtc => DateTime.UnixEpoch.AddSeconds(buffer.ModifiedSeconds).AddTicks(buffer.ModifiedNanoseconds / 100);
            public string Kind => Type switch
            {
                0x8000 => "a regular file", 0x4000 => "a directory", 0xA000 => "a symbolic link", 0x1000 => "a FIFO", 0xC000 => "a socket",
                0x2000 => "a character device", 0x6000 => "a block device", _ => $"file type {Type:x}",
            };
        }

        [LibraryImport("libc", EntryPoint = "statx", StringMarshalling = StringMarshalling.Utf8)]
        private static partial int statx(int directoryFd, string path, int flags, uint mask, ref StatxBuffer buffer);
    }

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int openat(int directoryFd, string path, int flags, int mode);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int flock(int fd, int operation);

    [LibraryImport("libc")]
    private static partial uint geteuid();
}

/// <summary>A file could not be opened for writing because its file system is mounted read-only.</summary>
internal sealed class ReadOnlyFileSystemException(string path)
    : IOException($"{path} is on a read-only file system; it can only be read.", 30);
