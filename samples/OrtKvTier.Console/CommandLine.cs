using System.Globalization;

namespace OrtKvTier.Console;

/// <summary>A user error on the command line: printed without a stack trace, exit code 2.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// The options a command was given, by name without the dashes: from System.CommandLine's parse result (the console: its
/// options already checked by the same conversions these readers use; <c>CommandLine.Parsed.cs</c>), or parsed from
/// <c>--name value</c> and <c>--flag</c> arguments (the benchmarks); every name must be consumed.
/// </summary>
internal sealed partial class CommandLine
{
    private readonly Dictionary<string, string?> _options = new(StringComparer.Ordinal);
    private readonly HashSet<string> _used = new(StringComparer.Ordinal);

    public CommandLine(IEnumerable<string> args, IReadOnlySet<string> flags)
    {
        using var e = args.GetEnumerator();
        while (e.MoveNext())
        {
            var arg = e.Current;
            if (!arg.StartsWith("--", StringComparison.Ordinal) || arg.Length == 2)
                throw new UsageException($"Unexpected argument '{arg}'; options start with --.");
            var name = arg[2..];
            if (flags.Contains(name)) { _options[name] = null; continue; }
            if (!e.MoveNext()) throw new UsageException($"Option --{name} needs a value.");
            _options[name] = e.Current;
        }
    }

    public bool Flag(string name)
    {
        _used.Add(name);
        return _options.ContainsKey(name);
    }

    public string? String(string name)
    {
        _used.Add(name);
        return _options.GetValueOrDefault(name);
    }

    public int Int(string name, int fallback, int min = int.MinValue)
    {
        var text = String(name);
        if (text is null) return fallback;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) || value < min)
            throw new UsageException($"--{name} expects an integer{(min > int.MinValue ? $" ≥ {min}" : "")}; got '{text}'.");
        return value;
    }

    /// <summary>A 64-bit seed: any whole number, negative ones taken as their two's complement (as OpenAI's API takes them).</summary>
    public ulong? Seed(string name)
    {
        var text = String(name);
        if (text is null) return null;
        return long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? unchecked((ulong)value)
            : ulong.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var large) ? large
            : throw new UsageException($"--{name} expects a whole number; got '{text}'.");
    }

    public double? Double(string name)
    {
        var text = String(name);
        if (text is null) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value))
            throw new UsageException($"--{name} expects a number; got '{text}'.");
        return value;
    }

    /// <summary>A byte size: <see cref="ParseSize"/>.</summary>
    public long Bytes(string name, long fallback, bool allowZero = false)
    {
        var text = String(name);
        if (text is null) return fallback;
        return ParseSize(text, allowZero) ?? throw new UsageException(SizeError("--" + name, text, allowZero));
    }

    public static string SizeError(string option, string text, bool allowZero) =>
        $"{option} expects a size such as 512MiB or 2GiB (binary) or 2GB (decimal){(allowZero ? ", or 0 (off)" : "")}; got '{text}'.";

    /// <summary>
    /// A positive byte size such as <c>4096</c>, <c>512MiB</c> or <c>2GiB</c> (binary), <c>2GB</c> or <c>1.5G</c> (decimal); null when it is not one.
    /// </summary>
    public static long? ParseSize(string text, bool allowZero = false)
    {
        if (allowZero && text.Trim() == "0") return 0;
        var units = new (string Suffix, long Factor)[]
        {
            ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40),
            ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
            ("K", 1000), ("M", 1_000_000), ("G", 1_000_000_000), ("T", 1_000_000_000_000), ("B", 1),
        };
        var (number, factor) = (text.Trim(), 1L);
        foreach (var (suffix, f) in units)
            if (number.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                (number, factor) = (number[..^suffix.Length], f);
                break;
            }
        return double.TryParse(number, NumberStyles.Float, CultureInfo.InvariantCulture, out var value) && value > 0 && value * factor <= long.MaxValue
            ? (long)(value * factor) : null;
    }

    /// <summary>Throws for options no reader asked for (likely typos).</summary>
    public void RejectUnknown()
    {
        var unknown = _options.Keys.Where(k => !_used.Contains(k)).ToList();
        if (unknown.Count > 0) throw new UsageException($"Unknown option{(unknown.Count > 1 ? "s" : "")}: {string.Join(", ", unknown.Select(u => "--" + u))}.");
    }
}
