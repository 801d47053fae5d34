namespace OrtKvTier.Console;

/// <summary>Finds the shipped model folders whether run from the repository or from a build output.</summary>
internal static class RepoPaths
{
    public static string DefaultModel => FindShipped("tiny");

    public static string FindShipped(string name)
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", name);
                if (File.Exists(Path.Combine(candidate, "genai_config.json"))) return candidate;
            }
        throw new UsageException($"Cannot find the shipped model 'models/{name}' above {Environment.CurrentDirectory}; pass --model DIR.");
    }
}
