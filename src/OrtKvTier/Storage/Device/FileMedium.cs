using Microsoft.Win32.SafeHandles;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>
/// A pool's files in a directory: regular files only, opened with positional I/O (<c>pread</c>/<c>pwrite</c>), never
/// through a symbolic link, private to their owner (or the directory's group, <see cref="PrivateFiles"/>). The directory
/// is opened once, at first use, without following a link at it or at the directory holding it (the cache directory),
/// and every name is resolved relative to that handle (<see cref="DirectoryHandle"/>): a neighbour who swaps either
/// directory's path for a link afterwards sends nothing anywhere else.
/// </summary>
internal sealed class FileMedium(string directory, bool? shareWithGroup = null) : IStorageMedium, IDisposable
{
    /// <summary>The trailing components of the pool's path opened without following a link: its directory and the cache directory holding it.</summary>
    public const int LinkFreeLevels = 2;

    /// <inheritdoc />
    public string Location { get; } = Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory));

    private DirectoryHandle? _directory;

    /// <summary>The directory, opened at first use and kept; null while it does not exist.</summary>
    private DirectoryHandle? Directory
    {
        get
        {
            if (Volatile.Read(ref _directory) is { } open) return open;
            if (DirectoryHandle.Open(Location, LinkFreeLevels) is not { } opened) return null;
            if (Interlocked.CompareExchange(ref _directory, opened, null) is { } raced)
            {
                opened.Dispose();
                return raced;
            }
            return opened;
        }
    }

    private DirectoryHandle Existing(string name) =>
        Directory ?? throw new FileNotFoundException($"{Location} does not exist, so there is no {name} in it.", PathOf(name)); // absent, as IStorageMedium.Open says

    /// <summary>Creates the directory (and its missing parents) owner-only, or group-shared, whatever the umask; an existing one is opened as it is.</summary>
    public void Create(bool group)
    {
        if (Volatile.Read(ref _directory) is not null) return;
        var created = DirectoryHandle.Open(Location, LinkFreeLevels, create: true, shareWithGroup: group)
            ?? throw new DirectoryNotFoundException($"{Location} vanished as it was created.");
        if (Interlocked.CompareExchange(ref _directory, created, null) is not null) created.Dispose();
    }

    /// <inheritdoc />
    public IStorageDevice Open(string name, DeviceAccess access) =>
        new FileDevice(name, PathOf(name), Existing(name).OpenFile(name, access == DeviceAccess.Read ? PrivateFiles.Access.Read : PrivateFiles.Access.ReadWrite));

    /// <inheritdoc />
    public IStorageDevice CreateNew(string name) => new FileDevice(name, PathOf(name), Existing(name).CreateFresh(name, shareWithGroup));

    private string PathOf(string name) => Path.Combine(Location, name);

    /// <inheritdoc />
    public bool Exists(string name) => Directory?.Find(name) is { IsDirectory: false };

    /// <inheritdoc />
    public (ulong FileId, long Length)? Identify(string name) => Directory?.Find(name) is { IsDirectory: false } entry ? (entry.FileId, entry.Length) : null;

    /// <inheritdoc />
    public void Replace(string from, string to) => Existing(from).Replace(from, to);

    /// <inheritdoc />
    public bool Delete(string name) => Directory?.Delete(name) ?? true;

    /// <inheritdoc />
    public IReadOnlyList<string> Names() => Directory is { } open ? [.. open.Entries().Where(e => !e.IsDirectory).Select(e => e.Name)] : [];

    /// <inheritdoc />
    public DateTime? LastWrite(string name) => Directory?.Find(name) is { IsDirectory: false } entry ? entry.LastWriteUtc : null;

    /// <inheritdoc />
    public void Sync() => Directory?.Sync();

    /// <inheritdoc />
    public IMediumLock OpenLock(string name) => new FileLock(this, name);

    private SafeFileHandle OpenOrCreate(string name) => Existing(name).OpenFile(name, PrivateFiles.Access.CreateOrOpen, shareWithGroup);

    /// <inheritdoc />
    public IDisposable MarkAlive(string name, uint id)
    {
        if (!PrivateFiles.CanLockHandles) return new SafeFileHandle(); // no way to tell liveness here: reservations expire by time
        var handle = OpenOrCreate(name);
        try
        {
            if (!PrivateFiles.TryLockByte(handle, id)) throw new IOException($"Writer {id} of {Location} is marked alive already.");
            return handle;
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    private SafeFileHandle? _liveness;

    /// <inheritdoc />
    public bool IsAlive(string name, uint id) => Locked(name, id, 1);

    /// <inheritdoc />
    public bool AnyAlive(string name) => Locked(name, 0, 0);

    private bool Locked(string name, long offset, long length)
    {
        if (!PrivateFiles.CanLockHandles) return true;
        try
        {
            if (_liveness is null && !Exists(name)) return false; // no writer ever marked itself here
            lock (this) return PrivateFiles.IsByteLocked(_liveness ??= OpenOrCreate(name), offset, length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return true; // cannot tell: reservations expire by time
        }
    }

    /// <summary>Closes the directory and the liveness file this medium kept open.</summary>
    public void Dispose()
    {
        lock (this) _liveness?.Dispose();
        Interlocked.Exchange(ref _directory, null)?.Dispose();
    }

    /// <summary>A file of the directory.</summary>
    private sealed class FileDevice : IStorageDevice
    {
        private readonly SafeFileHandle _handle;
        private readonly string _path;

        public FileDevice(string name, string path, SafeFileHandle handle)
        {
            Name = name;
            _path = path;
            _handle = handle;
            FileId = PrivateFiles.FileIdOf(handle, path);
        }

        public string Name { get; }
        public ulong FileId { get; }
        public long Length => RandomAccess.GetLength(_handle);

        public int Read(Span<byte> destination, long offset) => RandomAccess.Read(_handle, destination, offset);

        public void Write(ReadOnlySpan<byte> source, long offset) => RandomAccess.Write(_handle, source, offset);

        public void Flush() => RandomAccess.FlushToDisk(_handle);

        public void SetLength(long length) => RandomAccess.SetLength(_handle, length);

        public void Dispose() => _handle.Dispose();

        public override string ToString() => _path;
    }

    /// <summary>An OS lock (<c>flock</c>) on a lock file: kept open, locked and unlocked (Linux); elsewhere an exclusive open.</summary>
    private sealed class FileLock(FileMedium medium, string name) : IMediumLock
    {
        private SafeFileHandle? _handle;

        public bool TryEnter()
        {
            if (PrivateFiles.CanLockHandles)
            {
                _handle ??= medium.OpenOrCreate(name);
                return PrivateFiles.TryLockExclusive(_handle, medium.PathOf(name));
            }
            try
            {
                var path = medium.PathOf(name);
                PrivateFiles.RefuseLink(path);
                _handle = File.OpenHandle(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                return true;
            }
            catch (IOException e) when (e is not FileNotFoundException and not DirectoryNotFoundException)
            {
                return false;
            }
        }

        public void Exit()
        {
            if (_handle is null) return;
            if (PrivateFiles.CanLockHandles) PrivateFiles.Unlock(_handle);
            else
            {
                _handle.Dispose();
                _handle = null;
            }
        }

        public void Dispose()
        {
            _handle?.Dispose();
            _handle = null;
        }
    }
}
