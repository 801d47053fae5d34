namespace OrtKvTier.Storage;

/// <summary>
/// A medium that fails the way disks fail, as its <see cref="FaultPlan"/> says: transient and permanent I/O errors,
/// torn writes, no space from a chosen byte on, slow I/O. Wraps another medium (a real directory, or memory); the
/// fault tests run the pool on it. Changing the plan takes effect at the next operation.
/// </summary>
internal sealed class FaultMedium(IStorageMedium inner, FaultPlan plan) : IStorageMedium
{
    /// <summary>The faults in force.</summary>
    public FaultPlan Plan { get; } = plan;

    /// <inheritdoc />
    public string Location => inner.Location;

    /// <inheritdoc />
    public IStorageDevice Open(string name, DeviceAccess access) => new FaultDevice(inner.Open(name, access), Plan);

    /// <inheritdoc />
    public IStorageDevice CreateNew(string name)
    {
        Plan.BeforeCreate(name);
        return new FaultDevice(inner.CreateNew(name), Plan);
    }

    /// <inheritdoc />
    public bool Exists(string name) => inner.Exists(name);

    /// <inheritdoc />
    public (ulong FileId, long Length)? Identify(string name) => inner.Identify(name);

    /// <inheritdoc />
    public void Replace(string from, string to)
    {
        Plan.BeforeCreate(to);
        inner.Replace(from, to);
    }

    /// <inheritdoc />
    public bool Delete(string name) => inner.Delete(name);

    /// <inheritdoc />
    public IReadOnlyList<string> Names() => inner.Names();

    /// <inheritdoc />
    public DateTime? LastWrite(string name) => inner.LastWrite(name);

    /// <inheritdoc />
    public void Sync() => inner.Sync();

    /// <inheritdoc />
    public IMediumLock OpenLock(string name) => inner.OpenLock(name);

    /// <inheritdoc />
    public IDisposable MarkAlive(string name, uint id) => inner.MarkAlive(name, id);

    /// <inheritdoc />
    public bool IsAlive(string name, uint id) => inner.IsAlive(name, id);

    /// <inheritdoc />
    public bool AnyAlive(string name) => inner.AnyAlive(name);

    private sealed class FaultDevice(IStorageDevice device, FaultPlan plan) : IStorageDevice
    {
        public string Name => device.Name;
        public ulong FileId => device.FileId;
        public long Length => device.Length;

        public int Read(Span<byte> destination, long offset)
        {
            plan.BeforeRead(Name);
            int read = device.Read(destination, offset);
            plan.Counted(Name, read);
            return read;
        }

        public void Write(ReadOnlySpan<byte> source, long offset)
        {
            int stored = plan.BeforeWrite(Name, offset, source.Length, out var failure);
            if (stored > 0) device.Write(source[..stored], offset);
            if (failure is not null) throw failure;
        }

        public void Flush()
        {
            plan.BeforeFlush(Name);
            device.Flush();
        }

        public void SetLength(long length)
        {
            if (length > device.Length && plan.BeforeWrite(Name, length - 1, 1, out var failure) == 0 && failure is not null) throw failure;
            device.SetLength(length);
        }

        public void Dispose() => device.Dispose();
    }
}

/// <summary>
/// The faults a <see cref="FaultMedium"/> injects, per file name (null: every file). Counts make an error transient
/// (the next <c>n</c> operations fail, then they work again); <see cref="Permanent"/> makes it stay. Thread-safe.
/// </summary>
internal sealed class FaultPlan
{
    /// <summary>A count that never runs out.</summary>
    public const int Permanent = int.MaxValue;

    private const int EIO = 5, ENOSPC = 28;
    private readonly object _gate = new();
    private readonly Dictionary<string, int> _writeErrors = [], _readErrors = [], _flushErrors = [];
    private readonly Dictionary<string, long> _noSpaceFrom = [];
    private readonly Dictionary<string, int> _tornWrites = [];
    private const string AnyFile = "\0any";

    private readonly Dictionary<string, long> _bytesRead = [];
    private readonly Dictionary<string, ManualResetEventSlim> _paused = [];

    /// <summary>How long every read and write waits first (slow I/O).</summary>
    public TimeSpan Delay { get; set; }

    /// <summary>Writes that failed because of this plan.</summary>
    public long InjectedFailures { get; private set; }

    /// <summary>The next <paramref name="count"/> writes (and creations) of <paramref name="file"/> fail with an I/O error and store nothing.</summary>
    public FaultPlan FailWrites(string? file = null, int count = Permanent) => Set(_writeErrors, file, count);

    /// <summary>The next <paramref name="count"/> reads of <paramref name="file"/> fail with an I/O error.</summary>
    public FaultPlan FailReads(string? file = null, int count = Permanent) => Set(_readErrors, file, count);

    /// <summary>The next <paramref name="count"/> flushes (fsync) of <paramref name="file"/> fail.</summary>
    public FaultPlan FailFlushes(string? file = null, int count = Permanent) => Set(_flushErrors, file, count);

    /// <summary>The disk is full from byte <paramref name="offset"/> of <paramref name="file"/> on: a write reaching past it stores what fits, then fails with "no space".</summary>
    public FaultPlan NoSpaceFrom(string? file, long offset)
    {
        lock (_gate) _noSpaceFrom[file ?? AnyFile] = offset;
        return this;
    }

    /// <summary>The next write of <paramref name="file"/> stores only its first <paramref name="keepBytes"/> bytes, then fails (a crash in the middle of a write).</summary>
    public FaultPlan TearNextWrite(string? file, int keepBytes)
    {
        lock (_gate) _tornWrites[file ?? AnyFile] = keepBytes;
        return this;
    }

    /// <summary>Writes of <paramref name="file"/> wait from now until <see cref="Resume"/> (a stalled disk, or a writer frozen in the middle of a write).</summary>
    public FaultPlan PauseWrites(string file)
    {
        lock (_gate) _paused.TryAdd(file, new ManualResetEventSlim(false));
        return this;
    }

    /// <summary>Writes that wait on a pause: how many are waiting now.</summary>
    public int WritesWaiting { get; private set; }

    /// <summary>Lets the paused writes of <paramref name="file"/> go on.</summary>
    public void Resume(string file)
    {
        ManualResetEventSlim? gate;
        lock (_gate) _paused.Remove(file, out gate);
        gate?.Set();
    }

    /// <summary>Bytes read from <paramref name="file"/> through this plan's devices so far.</summary>
    public long BytesRead(string file)
    {
        lock (_gate) return _bytesRead.GetValueOrDefault(file);
    }

    internal void Counted(string file, int bytes)
    {
        lock (_gate) _bytesRead[file] = _bytesRead.GetValueOrDefault(file) + bytes;
    }

    /// <summary>Every fault removed (paused writes go on).</summary>
    public void Heal()
    {
        List<string> paused;
        lock (_gate) paused = [.. _paused.Keys];
        foreach (var file in paused) Resume(file);
        lock (_gate)
        {
            _writeErrors.Clear();
            _readErrors.Clear();
            _flushErrors.Clear();
            _noSpaceFrom.Clear();
            _tornWrites.Clear();
            Delay = TimeSpan.Zero;
        }
    }

    internal void BeforeCreate(string file)
    {
        lock (_gate)
            if (Take(_writeErrors, file)) throw Injected(file, EIO, "creating");
    }

    internal void BeforeRead(string file)
    {
        Wait();
        lock (_gate)
            if (Take(_readErrors, file)) throw Injected(file, EIO, "reading");
    }

    internal void BeforeFlush(string file)
    {
        lock (_gate)
            if (Take(_flushErrors, file)) throw Injected(file, EIO, "flushing");
    }

    /// <summary>How many of <paramref name="length"/> bytes at <paramref name="offset"/> to store, and the error to throw after (or null).</summary>
    internal int BeforeWrite(string file, long offset, int length, out IOException? failure)
    {
        Wait();
        ManualResetEventSlim? pause;
        lock (_gate) pause = _paused.GetValueOrDefault(file);
        if (pause is not null)
        {
            lock (_gate) WritesWaiting++;
            pause.Wait();
            lock (_gate) WritesWaiting--;
        }
        lock (_gate)
        {
            failure = null;
            if (Take(_writeErrors, file))
            {
                failure = Injected(file, EIO, "writing");
                return 0;
            }
            int stored = length;
            if (Lookup(_tornWrites, file) is { } torn)
            {
                _tornWrites.Remove(_tornWrites.ContainsKey(file) ? file : AnyFile);
                stored = Math.Min(length, torn);
                failure = Injected(file, EIO, "writing (torn)");
            }
            if (Lookup(_noSpaceFrom, file) is { } full && offset + stored > full)
            {
                stored = (int)Math.Clamp(full - offset, 0, stored);
                failure = Injected(file, ENOSPC, "writing (no space left on device)");
            }
            return stored;
        }
    }

    private FaultPlan Set(Dictionary<string, int> faults, string? file, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        lock (_gate) faults[file ?? AnyFile] = count;
        return this;
    }

    private static T? Lookup<T>(Dictionary<string, T> faults, string file) where T : struct =>
        faults.TryGetValue(file, out var v) ? v : faults.TryGetValue(AnyFile, out var any) ? any : null;

    private static bool Take(Dictionary<string, int> faults, string file)
    {
        var name = faults.ContainsKey(file) ? file : AnyFile;
        if (!faults.TryGetValue(name, out int left) || left == 0) return false;
        if (left != Permanent) faults[name] = left - 1;
        return true;
    }

    private IOException Injected(string file, int errno, string what)
    {
        InjectedFailures++;
        return new IOException($"injected fault {what} {file}: {(errno == ENOSPC ? "no space left on device" : "input/output error")}", errno);
    }

    private void Wait()
    {
        var delay = Delay;
        if (delay > TimeSpan.Zero) Thread.Sleep(delay);
    }
}
