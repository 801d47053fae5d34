using Microsoft.Win32.SafeHandles;
using OrtKvTier.Security;

namespace OrtKvTier.Storage;

/// <summary>
/// A pool's files in a directory: regular files only, opened with positional I/O (<c>pread</c>/<c>pwrite</c>), never
/// through a symbolic link, private to their owner (or the directory's group, <see cref="PrivateFiles"/>).
/// </summary>
internal sealed class FileMedium(string directory, bool? shareWithGroup = null) : IStorageMedium
{
    /// <inheritdoc />
    public string Location { get; } = Path.GetFullPath(directory);

    private string PathOf(string name) => Path.Combine(Location, name);

    /// <inheritdoc />
    public IStorageDevice Open(string name, DeviceAccess access) =>
        new FileDevice(name, PathOf(name), PrivateFiles.Open(PathOf(name), access == DeviceAccess.Read ? PrivateFiles.Access.Read : PrivateFiles.Access.ReadWrite));

    /// <inheritdoc />
    public IStorageDevice CreateNew(string name) => new FileDevice(name, PathOf(name), PrivateFiles.CreateFresh(PathOf(name), shareWithGroup));

    /// <inheritdoc />
    public bool Exists(string name) => File.Exists(PathOf(name)) || new FileInfo(PathOf(name)).LinkTarget is not null;

    /// <inheritdoc />
    public (ulong FileId, long Length)? Identify(string name) => PrivateFiles.Identify(PathOf(name));

    /// <inheritdoc />
    public void Replace(string from, string to) => File.Move(PathOf(from), PathOf(to), overwrite: true);

    /// <inheritdoc />
    public bool Delete(string name) => PrivateFiles.TryDelete(PathOf(name));

    /// <inheritdoc />
    public IReadOnlyList<string> Names() =>
        Directory.Exists(Location) ? [.. Directory.EnumerateFiles(Location).Select(Path.GetFileName).OfType<string>()] : [];

    /// <inheritdoc />
    public DateTime? LastWrite(string name) => File.Exists(PathOf(name)) ? File.GetLastWriteTimeUtc(PathOf(name)) : null;

    /// <inheritdoc />
    public void Sync() => PrivateFiles.SyncDirectory(Location);

    /// <inheritdoc />
    public IMediumLock OpenLock(string name) => new FileLock(PathOf(name), shareWithGroup);

    /// <inheritdoc />
    public IDisposable MarkAlive(string name, uint id)
    {
        if (!PrivateFiles.CanLockHandles) return new SafeFileHandle(); // no way to tell liveness here: reservations expire by time
        var handle = PrivateFiles.Open(PathOf(name), PrivateFiles.Access.CreateOrOpen, shareWithGroup);
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
            if (_liveness is null && !File.Exists(PathOf(name))) return false; // no writer ever marked itself here
            lock (this) return PrivateFiles.IsByteLocked(_liveness ??= PrivateFiles.Open(PathOf(name), PrivateFiles.Access.CreateOrOpen, shareWithGroup), offset, length);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return true; // cannot tell: reservations expire by time
        }
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
    private sealed class FileLock(string path, bool? shareWithGroup) : IMediumLock
    {
        private SafeFileHandle? _handle;

        public bool TryEnter()
        {
            if (PrivateFiles.CanLockHandles)
            {
                _handle ??= PrivateFiles.Open(path, PrivateFiles.Access.CreateOrOpen, shareWithGroup);
                return PrivateFiles.TryLockExclusive(_handle, path);
            }
            try
            {
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
