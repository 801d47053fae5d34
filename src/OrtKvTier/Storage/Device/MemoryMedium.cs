namespace OrtKvTier.Storage;

/// <summary>
/// A pool's files in memory (sparse pages): what tests and the cache's warm-up run a pool on. Several pools opened on
/// one medium behave like processes sharing a directory: each lock instance is its own holder, a replaced name is
/// another file to whoever opens it next, and devices opened before keep the file they had. Thread-safe.
/// </summary>
internal sealed class MemoryMedium(string location = "memory") : IStorageMedium
{
    private readonly object _gate = new();
    private readonly Dictionary<string, MemoryFile> _files = [];
    private readonly Dictionary<string, MemoryLock?> _locks = [];
    private ulong _nextId = 1;

    /// <inheritdoc />
    public string Location { get; } = location;

    /// <inheritdoc />
    public IStorageDevice Open(string name, DeviceAccess access)
    {
        lock (_gate)
            return _files.TryGetValue(name, out var file) ? new MemoryDevice(name, file, access == DeviceAccess.Read)
                : throw new FileNotFoundException($"{Location}/{name} does not exist.", name);
    }

    /// <inheritdoc />
    public IStorageDevice CreateNew(string name)
    {
        lock (_gate)
        {
            var file = new MemoryFile(_nextId++);
            _files[name] = file;
            return new MemoryDevice(name, file, readOnly: false);
        }
    }

    /// <inheritdoc />
    public bool Exists(string name)
    {
        lock (_gate) return _files.ContainsKey(name);
    }

    /// <inheritdoc />
    public (ulong FileId, long Length)? Identify(string name)
    {
        lock (_gate) return _files.TryGetValue(name, out var file) ? (file.Id, file.Length) : null;
    }

    /// <inheritdoc />
    public void Replace(string from, string to)
    {
        lock (_gate)
        {
            if (!_files.Remove(from, out var file)) throw new FileNotFoundException($"{Location}/{from} does not exist.", from);
            _files[to] = file;
        }
    }

    /// <inheritdoc />
    public bool Delete(string name)
    {
        lock (_gate) return _files.Remove(name);
    }

    /// <inheritdoc />
    public IReadOnlyList<string> Names()
    {
        lock (_gate) return [.. _files.Keys];
    }

    /// <inheritdoc />
    public DateTime? LastWrite(string name)
    {
        lock (_gate) return _files.TryGetValue(name, out var file) ? file.LastWrite : null;
    }

    /// <inheritdoc />
    public void Sync() { }

    /// <inheritdoc />
    public IMediumLock OpenLock(string name) => new MemoryLock(this, name);

    private readonly HashSet<(string, uint)> _alive = [];

    /// <inheritdoc />
    public IDisposable MarkAlive(string name, uint id)
    {
        lock (_gate)
            if (!_alive.Add((name, id))) throw new IOException($"Writer {id} of {Location} is marked alive already.");
        return new Alive(this, (name, id));
    }

    /// <inheritdoc />
    public bool IsAlive(string name, uint id)
    {
        lock (_gate) return _alive.Contains((name, id));
    }

    /// <inheritdoc />
    public bool AnyAlive(string name)
    {
        lock (_gate) return _alive.Any(mark => mark.Item1 == name);
    }

    private sealed class Alive(MemoryMedium medium, (string, uint) mark) : IDisposable
    {
        public void Dispose()
        {
            lock (medium._gate) medium._alive.Remove(mark);
        }
    }

    private sealed class MemoryLock(MemoryMedium medium, string name) : IMediumLock
    {
        public bool TryEnter()
        {
            lock (medium._gate)
            {
                if (medium._locks.GetValueOrDefault(name) is { } holder && holder != this) return false;
                medium._locks[name] = this;
                return true;
            }
        }

        public void Exit()
        {
            lock (medium._gate)
                if (medium._locks.GetValueOrDefault(name) == this) medium._locks[name] = null;
        }

        public void Dispose() => Exit();
    }

    /// <summary>A file's bytes in pages of 64 KiB, allocated when first written (the rest reads as zeros).</summary>
    private sealed class MemoryFile(ulong id)
    {
        private const int PageBytes = 1 << 16;
        private readonly Dictionary<long, byte[]> _pages = [];

        public ulong Id { get; } = id;
        public long Length { get; private set; }
        public DateTime LastWrite { get; private set; } = DateTime.UtcNow;

        public int Read(Span<byte> destination, long offset)
        {
            lock (_pages)
            {
                int count = (int)Math.Clamp(Length - offset, 0, destination.Length);
                for (int done = 0; done < count;)
                {
                    long at = offset + done;
                    int inPage = (int)(at % PageBytes), n = Math.Min(count - done, PageBytes - inPage);
                    if (_pages.TryGetValue(at / PageBytes, out var page)) page.AsSpan(inPage, n).CopyTo(destination[done..]);
                    else destination.Slice(done, n).Clear();
                    done += n;
                }
                return count;
            }
        }

        public void Write(ReadOnlySpan<byte> source, long offset)
        {
            lock (_pages)
            {
                for (int done = 0; done < source.Length;)
                {
                    long at = offset + done;
                    int inPage = (int)(at % PageBytes), n = Math.Min(source.Length - done, PageBytes - inPage);
                    if (!_pages.TryGetValue(at / PageBytes, out var page)) _pages[at / PageBytes] = page = new byte[PageBytes];
                    source.Slice(done, n).CopyTo(page.AsSpan(inPage));
                    done += n;
                }
                Length = Math.Max(Length, offset + source.Length);
                LastWrite = DateTime.UtcNow;
            }
        }

        public void SetLength(long length)
        {
            lock (_pages)
            {
                foreach (var index in _pages.Keys.Where(p => p * PageBytes >= length).ToList()) _pages.Remove(index);
                if (length < Length && _pages.TryGetValue(length / PageBytes, out var last)) last.AsSpan((int)(length % PageBytes)).Clear();
                Length = length;
                LastWrite = DateTime.UtcNow;
            }
        }
    }

    private sealed class MemoryDevice(string name, MemoryFile file, bool readOnly) : IStorageDevice
    {
        public string Name { get; } = name;
        public ulong FileId => file.Id;
        public long Length => file.Length;

        public int Read(Span<byte> destination, long offset) => file.Read(destination, offset);

        public void Write(ReadOnlySpan<byte> source, long offset)
        {
            RequireWritable();
            file.Write(source, offset);
        }

        public void Flush() { }

        public void SetLength(long length)
        {
            RequireWritable();
            file.SetLength(length);
        }

        public void Dispose() { }

        private void RequireWritable()
        {
            if (readOnly) throw new UnauthorizedAccessException($"{Name} was opened read-only.");
        }
    }
}
