namespace OrtKvTier.Tests.Support;

/// <summary>A fact that runs a child as another user; skipped, saying why, unless the tests run as root with setpriv.</summary>
internal sealed class OtherUserFactAttribute : FactAttribute
{
    public OtherUserFactAttribute()
    {
        if (!OperatingSystem.IsLinux()) Skip = "needs Linux (setpriv)";
        else if (Environment.UserName != "root") Skip = "needs root to run a child process under another uid (run the tests as root, as CI does)";
        else if (!File.Exists("/usr/bin/setpriv")) Skip = "needs setpriv (util-linux) to run a child process under another uid";
    }
}

/// <summary>A fact that mounts a small tmpfs; skipped, saying why, where mounting is not allowed.</summary>
internal sealed class TmpfsFactAttribute : FactAttribute
{
    public TmpfsFactAttribute()
    {
        if (Tmpfs.Unavailable() is { } reason) Skip = reason;
    }
}

/// <summary>A real tmpfs of a given size, unmounted on dispose.</summary>
internal sealed class Tmpfs : IDisposable
{
    public Tmpfs(string path, string size)
    {
        Directory.CreateDirectory(path);
        Path = path;
        var result = ChildProcess.Output("mount", "-t", "tmpfs", "-o", $"size={size},mode=0777", "tmpfs", path);
        if (!ChildProcess.Output("findmnt", "-n", "-o", "FSTYPE", path).Contains("tmpfs", StringComparison.Ordinal))
            throw new InvalidOperationException($"Could not mount a tmpfs at {path}: {result}");
    }

    public string Path { get; }

    /// <summary>Remounts it read-only (<c>true</c>) or writable.</summary>
    public void ReadOnly(bool readOnly) => ChildProcess.Output("mount", "-o", readOnly ? "remount,ro" : "remount,rw", Path);

    public static string? Unavailable()
    {
        if (!OperatingSystem.IsLinux()) return "needs Linux tmpfs";
        if (Environment.UserName != "root") return "needs root to mount a tmpfs (run the tests as root, as CI does)";
        var probe = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ortkv-tmpfs-probe-" + Guid.NewGuid().ToString("N")[..8]);
        try
        {
            using var _ = new Tmpfs(probe, "64k");
            return null;
        }
        catch (Exception e) when (e is InvalidOperationException or System.ComponentModel.Win32Exception or IOException)
        {
            return $"cannot mount a tmpfs here ({e.Message})";
        }
        finally
        {
            try { Directory.Delete(probe); } catch (IOException) { }
        }
    }

    public void Dispose() => ChildProcess.Output("umount", Path);
}
