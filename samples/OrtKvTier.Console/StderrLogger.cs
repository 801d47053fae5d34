using Microsoft.Extensions.Logging;

namespace OrtKvTier.Console;

/// <summary>Writes the library's log to stderr, one line each: information and above, debug too with <c>--verbose</c>.</summary>
internal sealed class StderrLogger : ILogger
{
    public static readonly StderrLogger Instance = new();

    /// <summary>Whether debug messages are written too.</summary>
    public static bool Verbose { get; set; }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= (Verbose ? LogLevel.Debug : LogLevel.Information);

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) System.Console.Error.WriteLine($"{logLevel.ToString().ToLowerInvariant()}: {formatter(state, exception)}");
    }
}
