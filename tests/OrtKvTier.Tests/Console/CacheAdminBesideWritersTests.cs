using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

/// <summary>`cache prune` and `cache clear` in a loop beside processes generating with the same cache: no request fails, every answer is the one without a cache.</summary>
public sealed class CacheAdminBesideWritersTests : IDisposable
{
    private readonly TempDir _temp = new();

    [Fact]
    public async Task PruneAndClearInALoopFailNoRequest()
    {
        string[] prompts =
        [
            string.Join(' ', Enumerable.Repeat("The router's manual says to hold the reset button for ten seconds.", 3)),
            string.Join(' ', Enumerable.Repeat("A cache that is pruned while in use must still answer correctly.", 3)),
        ];
        string Tokens(params string[] args)
        {
            var run = ChildProcess.Console(["generate", "--max-new-tokens", "4", "--json", .. args]);
            Assert.True(run.ExitCode == 0, $"generate {string.Join(' ', args)}: exit {run.ExitCode}: {run.StdErr}");
            return JsonDocument.Parse(run.StdOut).RootElement.GetProperty("tokens").GetRawText();
        }
        var expected = prompts.Select(p => Tokens("--prompt", p, "--no-cache")).ToArray();
        string dir = _temp.Sub("cache");

        using var done = new CancellationTokenSource();
        int adminRuns = 0;
        var admin = Task.Run(() =>
        {
            while (!done.IsCancellationRequested)
            {
                foreach (var args in new[] { new[] { "cache", "prune", "--keep", "0", "--cache-dir", dir }, ["cache", "clear", "--cache-dir", dir] })
                {
                    var run = ChildProcess.Console(args);
                    // Nothing to clear yet is an answer (exit 2, "No slot pool"), not a failure of a request.
                    Assert.True(run.ExitCode == 0 || run.StdErr.Contains("No slot pool", StringComparison.Ordinal), $"{string.Join(' ', args)}: {run.StdErr}");
                    Interlocked.Increment(ref adminRuns);
                }
            }
        });
        var writers = Enumerable.Range(0, 2).Select(w => Task.Run(() =>
        {
            for (int i = 0; i < 6; i++)
            {
                int p = (w + i) % prompts.Length;
                Assert.Equal(expected[p], Tokens("--prompt", prompts[p], "--cache-dir", dir, "--chunk-tokens", "16", "--always-restore"));
            }
        })).ToArray();
        try
        {
            await Task.WhenAll(writers);
        }
        finally
        {
            done.Cancel();
            await admin;
        }
        Assert.True(adminRuns >= 4, $"only {adminRuns} admin commands ran beside the writers");
    }

    public void Dispose() => _temp.Dispose();
}
