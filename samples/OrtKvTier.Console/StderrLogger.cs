using Microsoft.Extensions.Logging;

namespace OrtKvTier.Console;

/// <summary>Writes the library's warnings to stderr, one line each.</summary>
internal sealed class StderrLogger : ILogger
{
    public static readonly StderrLogger Instance = new();

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => logLevel >= LogLevel.Information;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        if (IsEnabled(logLevel)) System.Console.Error.WriteLine($"{logLevel.ToString().ToLowerInvariant()}: {formatter(state, exception)}");
    }
}
