namespace OrtKvTier.Storage;

/// <summary>How a device is opened.</summary>
internal enum DeviceAccess
{
    /// <summary>An existing file, read only.</summary>
    Read,
    /// <summary>An existing file, read and written.</summary>
    ReadWrite,
}

/// <summary>
/// Where a pool's files live: a directory (<see cref="FileMedium"/>) or memory (<see cref="MemoryMedium"/>). It hands out
/// <see cref="IStorageDevice"/>s by name and does the few things a pool does to names: atomic replacement, removal,
/// identification (so a reader notices a journal replaced by a compaction) and the cross-process writer lock.
/// </summary>
internal interface IStorageMedium
{
    /// <summary>Where the files are, for messages (a directory path).</summary>
    string Location { get; }

    /// <summary>Opens the file at <paramref name="name"/>. <see cref="FileNotFoundException"/> when there is none.</summary>
    IStorageDevice Open(string name, DeviceAccess access);

    /// <summary>Creates the file at <paramref name="name"/> exclusively, after removing whatever was there (never following a link).</summary>
    IStorageDevice CreateNew(string name);

    /// <summary>Whether something is at <paramref name="name"/>.</summary>
    bool Exists(string name);

    /// <summary>The id (<see cref="IStorageDevice.FileId"/>) and length of the file at <paramref name="name"/> now; null when absent.</summary>
    (ulong FileId, long Length)? Identify(string name);

    /// <summary>Puts the file at <paramref name="from"/> in place of whatever is at <paramref name="to"/>, atomically.</summary>
    void Replace(string from, string to);

    /// <summary>Removes the file at <paramref name="name"/> (false when it could not).</summary>
    bool Delete(string name);

    /// <summary>The names of the files in the medium.</summary>
    IReadOnlyList<string> Names();

    /// <summary>When the file at <paramref name="name"/> was last written (UTC); null when absent.</summary>
    DateTime? LastWrite(string name);

    /// <summary>Makes the names' changes (creations, replacements) durable.</summary>
    void Sync();

    /// <summary>The cross-process lock kept in the file at <paramref name="name"/> (created when missing).</summary>
    IMediumLock OpenLock(string name);

    /// <summary>
    /// Says that writer <paramref name="id"/> is alive for as long as the returned handle is open (on files an OS lock on
    /// byte <paramref name="id"/> of the file at <paramref name="name"/>, dropped by the kernel when the process dies).
    /// </summary>
    IDisposable MarkAlive(string name, uint id);

    /// <summary>Whether writer <paramref name="id"/>'s <see cref="MarkAlive"/> handle is open in some process (true when it cannot be told).</summary>
    bool IsAlive(string name, uint id);

    /// <summary>Whether any writer's <see cref="MarkAlive"/> handle is open (true when it cannot be told).</summary>
    bool AnyAlive(string name);
}

/// <summary>
/// An exclusive lock other processes see (on files an OS lock, dropped by the kernel when the holder dies). Each
/// instance is its own holder, like an open file: two instances in one process exclude each other.
/// </summary>
internal interface IMediumLock : IDisposable
{
    /// <summary>Takes the lock if nobody holds it; false otherwise. Never waits.</summary>
    bool TryEnter();

    /// <summary>Lets the lock go.</summary>
    void Exit();
}
