namespace OrtKvTier.Model;

/// <summary>
/// A model folder that cannot be used: names the file and the field, what was expected and what was found.
/// </summary>
public sealed class ModelFolderException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ModelFolderException(string file, string field, string expected, string found, string? fix = null, Exception? inner = null)
        : base(Compose(file, field, expected, found, fix), inner)
    {
        File = file;
        Field = field;
    }

    /// <summary>The file at fault (full path).</summary>
    public string File { get; }

    /// <summary>The field at fault, as a JSON path or graph name; empty for the file as a whole.</summary>
    public string Field { get; }

    private static string Compose(string file, string field, string expected, string found, string? fix) =>
        $"{file}{(field.Length > 0 ? $": {field}" : "")}: expected {expected}; found {found}." + (fix is null ? "" : $" {fix}");
}
