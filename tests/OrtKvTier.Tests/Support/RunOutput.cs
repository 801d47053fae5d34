using System.Text.Json;

namespace OrtKvTier.Tests.Support;

/// <summary>What a child run of the console printed.</summary>
internal static class RunOutput
{
    /// <summary>The JSON a successful run printed; a failed run fails the test with its exit code and stderr.</summary>
    public static JsonElement Json((int ExitCode, string StdOut, string StdErr) run)
    {
        Assert.True(run.ExitCode == 0, $"exit {run.ExitCode}: {run.StdErr}");
        return JsonDocument.Parse(run.StdOut).RootElement.Clone();
    }
}
