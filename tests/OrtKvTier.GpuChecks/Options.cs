namespace OrtKvTier.GpuChecks;

internal sealed record Options(string Model, int[] Tokens, string OutDirectory, string ScratchDirectory)
{
    public static Options Parse(string[] args)
    {
        string? model = null, outDir = null;
        int[] tokens = [2048, 8192];
        for (int i = 0; i < args.Length; i++)
            switch (args[i])
            {
                case "--model": model = args[++i]; break;
                case "--tokens": tokens = args[++i].Split(',').Select(int.Parse).ToArray(); break;
                case "--out": outDir = args[++i]; break;
                default: throw new ArgumentException($"Unknown argument '{args[i]}'. Usage: [--model DIR] [--tokens 2048,8192] [--out DIR]");
            }
        model ??= FindModel();
        outDir ??= Environment.GetEnvironmentVariable("OUT") is { Length: > 0 } o ? o : Path.Combine(Path.GetTempPath(), "ortkv-gpu-checks");
        return new Options(model, tokens, outDir, Path.Combine(Path.GetTempPath(), "ortkv-gpu-checks-scratch"));
    }

    /// <summary>models/tiny-fp16 under the working directory (the bundle), the executable's folder, or a parent (the repository).</summary>
    private static string FindModel()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, "models", "tiny-fp16");
                if (File.Exists(Path.Combine(candidate, "genai_config.json"))) return candidate;
            }
        throw new ArgumentException("models/tiny-fp16 not found; pass --model DIR (bundle it with GPU_BUNDLE_EXTRA=models/tiny-fp16).");
    }
}
