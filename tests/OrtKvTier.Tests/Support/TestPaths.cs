using System.Text.Json.Nodes;
using OrtKvTier.ModelBuilder;

namespace OrtKvTier.Tests.Support;

/// <summary>Locates the repository's shipped models and makes per-test temporary folders.</summary>
internal static class TestPaths
{
    public static string RepoRoot { get; } = FindRepoRoot();

    public static string Tiny => Path.Combine(RepoRoot, "models", "tiny");
    public static string TinyFp16 => Path.Combine(RepoRoot, "models", "tiny-fp16");

    /// <summary>The small model trained on English text (<c>../shared/models/trained-byte-4L</c> beside the repository, or <c>$ORTKV_TRAINED_MODEL</c>).</summary>
    public static string TrainedModel => Environment.GetEnvironmentVariable("ORTKV_TRAINED_MODEL") is { Length: > 0 } given ? given
        : Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "models", "trained-byte-4L"));

    public static string Shipped(string name) => Path.Combine(RepoRoot, "models", name);

    /// <summary>Copies a model folder into <paramref name="target"/>, optionally editing genai_config.json.</summary>
    public static string CopyModel(string source, string target, Action<JsonObject>? editConfig = null)
    {
        Directory.CreateDirectory(target);
        foreach (var file in Directory.GetFiles(source))
            File.Copy(file, Path.Combine(target, Path.GetFileName(file)), overwrite: true);
        if (editConfig is not null)
        {
            var path = Path.Combine(target, "genai_config.json");
            var config = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            editConfig(config);
            File.WriteAllText(path, config.ToJsonString());
        }
        return target;
    }

    /// <summary>A copy of a shipped model with <c>past_present_share_buffer</c> set.</summary>
    public static string WithSharedBuffer(string source, string target, bool shared) =>
        CopyModel(source, target, c => c["search"]!["past_present_share_buffer"] = shared);

    public static string Build(string target, ModelShape shape)
    {
        ModelFolderBuilder.Build(target, shape);
        return target;
    }

    private static string FindRepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "OrtKvTier.sln"))) return dir.FullName;
        throw new InvalidOperationException($"No OrtKvTier.sln above {AppContext.BaseDirectory}.");
    }
}

/// <summary>A temporary directory removed on dispose.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "ortkv-test-" + Guid.NewGuid().ToString("N")[..12]);

    public string Sub(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Writes <paramref name="text"/> to a file of this directory; its path.</summary>
    public string File(string name, string text)
    {
        var path = Sub(name);
        System.IO.File.WriteAllText(path, text);
        return path;
    }

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}

/// <summary>A fact that needs the trained model (<see cref="TestPaths.TrainedModel"/>); skipped, saying where it was looked for, where it is absent.</summary>
public sealed class TrainedModelFactAttribute : FactAttribute
{
    public TrainedModelFactAttribute()
    {
        if (!File.Exists(Path.Combine(TestPaths.TrainedModel, "genai_config.json")))
            Skip = $"The trained model is not at {TestPaths.TrainedModel} (set ORTKV_TRAINED_MODEL to its folder).";
    }
}
