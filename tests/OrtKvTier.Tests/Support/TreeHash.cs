using System.Security.Cryptography;

namespace OrtKvTier.Tests.Support;

/// <summary>One hash of a directory tree: every path, file content and mode, so a test can say nothing in it changed.</summary>
[System.Runtime.Versioning.SupportedOSPlatform("linux")]
internal static class TreeHash
{
    public static string Of(string tree) => Convert.ToHexString(SHA256.HashData(System.Text.Encoding.UTF8.GetBytes(string.Join('\n',
        Directory.GetFileSystemEntries(tree, "*", SearchOption.AllDirectories).Order(StringComparer.Ordinal)
            .Select(p => $"{p} {(File.Exists(p) ? Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(p))) : "dir")} {File.GetUnixFileMode(p)}")))));

    /// <summary>A directory of files named like a pool's (and one that is not), standing for somebody else's files the cache must never touch.</summary>
    public static string Victim(string path)
    {
        Directory.CreateDirectory(path);
        File.WriteAllText(Path.Combine(path, "slots.bin"), "not a pool: somebody's file named slots.bin");
        File.WriteAllText(Path.Combine(path, "precious.txt"), "precious");
        File.WriteAllText(Path.Combine(path, "index.journal"), "also precious");
        File.WriteAllText(Path.Combine(path, "index.snapshot"), "precious too");
        return path;
    }
}
