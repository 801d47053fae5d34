namespace OrtKvTier.Storage;

/// <summary>
/// The files of another medium whose names start with <paramref name="prefix"/>, seen without it: a second pool staged
/// beside the first in the same directory (a shrink copies into one, then renames its files into place).
/// </summary>
internal sealed class PrefixedMedium(IStorageMedium inner, string prefix) : IStorageMedium
{
    /// <summary>The medium underneath.</summary>
    public IStorageMedium Inner { get; } = inner;

    /// <summary>The prefix of this view's names in <see cref="Inner"/>.</summary>
    public string Prefix { get; } = prefix;

    /// <inheritdoc />
    public string Location => $"{Inner.Location} ({Prefix}*)";

    /// <inheritdoc />
    public IStorageDevice Open(string name, DeviceAccess access) => Inner.Open(Prefix + name, access);

    /// <inheritdoc />
    public IStorageDevice CreateNew(string name) => Inner.CreateNew(Prefix + name);

    /// <inheritdoc />
    public bool Exists(string name) => Inner.Exists(Prefix + name);

    /// <inheritdoc />
    public (ulong FileId, long Length)? Identify(string name) => Inner.Identify(Prefix + name);

    /// <inheritdoc />
    public void Replace(string from, string to) => Inner.Replace(Prefix + from, Prefix + to);

    /// <inheritdoc />
    public bool Delete(string name) => Inner.Delete(Prefix + name);

    /// <inheritdoc />
    public IReadOnlyList<string> Names() => [.. Inner.Names().Where(n => n.StartsWith(Prefix, StringComparison.Ordinal)).Select(n => n[Prefix.Length..])];

    /// <inheritdoc />
    public DateTime? LastWrite(string name) => Inner.LastWrite(Prefix + name);

    /// <inheritdoc />
    public void Sync() => Inner.Sync();

    /// <inheritdoc />
    public IMediumLock OpenLock(string name) => Inner.OpenLock(Prefix + name);

    /// <inheritdoc />
    public IDisposable MarkAlive(string name, uint id) => Inner.MarkAlive(Prefix + name, id);

    /// <inheritdoc />
    public bool IsAlive(string name, uint id) => Inner.IsAlive(Prefix + name, id);

    /// <inheritdoc />
    public bool AnyAlive(string name) => Inner.AnyAlive(Prefix + name);
}
