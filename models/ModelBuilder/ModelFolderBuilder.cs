using OrtKvTier.ModelBuilder.Onnx;

namespace OrtKvTier.ModelBuilder;

/// <summary>
/// Writes a complete GenAI model folder (model.onnx, genai_config.json, tokenizer.json,
/// tokenizer_config.json) for a <see cref="ModelShape"/>, deterministically from its seed.
/// </summary>
public static class ModelFolderBuilder
{
    /// <summary>Builds the folder, replacing its files if present.</summary>
    public static void Build(string folder, ModelShape shape)
    {
        ArgumentException.ThrowIfNullOrEmpty(folder);
        ArgumentNullException.ThrowIfNull(shape);
        shape.Validate();
        Directory.CreateDirectory(folder);
        using (var externalData = shape.ExternalDataFile is { } dataFile ? new FileStream(Path.Combine(folder, dataFile), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20) : null)
            File.WriteAllBytes(Path.Combine(folder, "model.onnx"), new DecoderGraph(shape, externalData).Build());
        GenAiConfigFile.Write(folder, shape);
        TokenizerFiles.Write(folder, shape);
    }

    /// <summary>
    /// Builds the folder unless it already holds a model built from the same shape (recorded in
    /// <c>builder_shape.txt</c>); returns the folder. Used for bench-size models built on demand.
    /// </summary>
    public static string EnsureBuilt(string folder, ModelShape shape)
    {
        var stamp = Path.Combine(folder, "builder_shape.txt");
        if (File.Exists(stamp) && File.ReadAllText(stamp) == shape.ToString() && File.Exists(Path.Combine(folder, "model.onnx")))
            return folder;
        Build(folder, shape);
        File.WriteAllText(stamp, shape.ToString());
        return folder;
    }

    /// <summary>The id of a special token in a model built with <paramref name="shape"/>.</summary>
    public static int SpecialTokenId(ModelShape shape, string special) => TokenizerFiles.SpecialId(shape.Vocab, special);
}
