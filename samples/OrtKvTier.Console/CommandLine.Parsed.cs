using System.CommandLine;
using System.CommandLine.Parsing;

namespace OrtKvTier.Console;

internal sealed partial class CommandLine
{
    /// <summary>The options given explicitly to the parsed command (defaults stay the readers' fallbacks).</summary>
    public CommandLine(ParseResult result)
    {
        foreach (var option in result.CommandResult.Children.OfType<OptionResult>().Where(o => !o.Implicit))
        {
            var name = option.Option.Name.TrimStart('-');
            if (option.Option == ConsoleCli.Verbose) continue; // read by the program itself
            _options[name] = option.Option.ValueType == typeof(bool) ? (option.GetValueOrDefault<bool>() ? null : throw new UsageException($"--{name} takes no value."))
                : option.Tokens.Count > 0 ? option.Tokens[^1].Value : null;
        }
    }

}
