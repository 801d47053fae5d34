using System.Text.Json;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Benchmarks;

/// <summary>The model benches run end to end on the tiny model and report what the README reads from them.</summary>
public sealed class BenchCommandTests
{
    [Fact]
    public void BenchTtftReportsAllFourRowsAndRestoresThePrefixFromHostAndDisk()
    {
        // --always-restore: on the tiny model restoring four chunks and computing them cost about the same, and the cache may compute.
        var run = ChildProcess.Bench("ttft", "--model", TestPaths.Tiny, "--prefix-tokens", "128", "--suffix-tokens", "4", "--new-tokens", "2", "--reps", "1", "--always-restore", "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var root = JsonDocument.Parse(run.StdOut).RootElement;
        foreach (var row in new[] { "no_cache", "host_hit", "disk_hit", "genai" })
            Assert.True(root.GetProperty("ttft_ms").GetProperty(row).GetDouble() > 0, row);
        var phases = root.GetProperty("phases_ms");
        Assert.Equal(128, phases.GetProperty("host_hit").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(128, phases.GetProperty("disk_hit").GetProperty("cached_tokens").GetInt32());
        Assert.Equal(4, phases.GetProperty("disk_hit").GetProperty("prefill_tokens").GetInt32());
        Assert.Equal(132, phases.GetProperty("no_cache").GetProperty("prefill_tokens").GetInt32());
    }

    [Fact]
    public void BenchChunksAndBenchChatRunAndReportEveryRow()
    {
        var chunks = ChildProcess.Bench("chunks", "--model", TestPaths.Tiny, "--prefix-tokens", "128", "--sizes", "16,32", "--reps", "1", "--json");
        Assert.True(chunks.ExitCode == 0, chunks.StdErr);
        var rows = JsonDocument.Parse(chunks.StdOut).RootElement.GetProperty("rows").EnumerateArray().ToArray();
        Assert.Equal([16, 32], rows.Select(r => r.GetProperty("chunk_tokens").GetInt32()));
        Assert.All(rows, r => Assert.True(r.GetProperty("disk_restore_ms").GetDouble() > 0));

        using var temp = new TempDir();
        var svg = temp.Sub("chat.svg");
        var chat = ChildProcess.Bench("chat", "--model", TestPaths.Tiny, "--conversations", "2", "--turns", "2", "--system-tokens", "64",
            "--user-tokens", "8", "--new-tokens", "4", "--chart", svg, "--json");
        Assert.True(chat.ExitCode == 0, chat.StdErr);
        var turns = JsonDocument.Parse(chat.StdOut).RootElement.GetProperty("per_turn").EnumerateArray().ToArray();
        Assert.Equal(2, turns.Length);
        Assert.True(turns[1].GetProperty("kv_cache_cached_tokens").GetDouble() >= 64);
        Assert.StartsWith("<svg", File.ReadAllText(svg));
    }

    [Fact]
    public void BenchCaptureTimesTheSecondTokenWithTheCaptureInlineAndInTheBackground()
    {
        var run = ChildProcess.Bench("capture", "--model", TestPaths.Tiny, "--prompt-tokens", "128", "--new-tokens", "4", "--reps", "1", "--intra-op-threads", "1", "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var root = JsonDocument.Parse(run.StdOut).RootElement;
        foreach (var mode in new[] { "inline", "background" })
        {
            Assert.True(root.GetProperty(mode).GetProperty("second_token_ms").GetDouble() > 0, mode);
            Assert.True(root.GetProperty(mode).GetProperty("later_token_ms").GetDouble() > 0, mode);
        }
        Assert.True(root.GetProperty("second_token_inline_over_background").GetDouble() > 0);
        Assert.Equal(1, root.GetProperty("intra_op_threads").GetInt32());
    }

    [Fact]
    public void BenchLoadComparesOurLoadWithGenAisAndTimesTheFingerprint()
    {
        var run = ChildProcess.Bench("load", "--model", TestPaths.Tiny, "--reps", "1", "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var row = JsonDocument.Parse(run.StdOut).RootElement.GetProperty("rows")[0];
        Assert.True(row.GetProperty("kvmodel_load_ms").GetDouble() > 0);
        Assert.True(row.GetProperty("genai_model_ms").GetDouble() > 0);
        Assert.True(row.GetProperty("fingerprint_ms").GetDouble() > 0);
    }

    [Fact]
    public void BenchServeRunsClientsAgainstTheServerOneAtATimeAndBatchedWithAndWithoutTheCache()
    {
        var run = ChildProcess.Bench("serve", "--model", TestPaths.Tiny, "--clients", "3", "--turns", "2", "--system-tokens", "64", "--new-tokens", "6", "--batch-rows", "4", "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        var json = JsonDocument.Parse(run.StdOut).RootElement;
        var runs = json.GetProperty("runs").EnumerateArray().ToArray();
        Assert.Equal(["batch1_cache", "batch1_no_cache", "batched_cache", "batched_no_cache"], runs.Select(r => r.GetProperty("mode").GetString()));
        Assert.All(runs, r => Assert.Equal(6, r.GetProperty("requests").GetInt32()));
        Assert.All(runs, r => Assert.Equal(0, r.GetProperty("failed").GetInt32()));
        Assert.All(runs, r => Assert.True(r.GetProperty("tokens_per_second_per_client").GetDouble() > 0));
        Assert.True(runs[0].GetProperty("cached_tokens").GetInt64() > 0);
        Assert.True(runs[2].GetProperty("cached_tokens").GetInt64() > 0);
        Assert.Equal(0, runs[1].GetProperty("cached_tokens").GetInt64());
        Assert.Equal(0, runs[3].GetProperty("cached_tokens").GetInt64());
        Assert.Equal(1, runs[0].GetProperty("batch_largest").GetInt32());
        Assert.InRange(runs[2].GetProperty("batch_largest").GetInt32(), 1, 4);
        Assert.True(json.GetProperty("ratios")[0].GetProperty("requests_per_second_batched_over_batch1_cache").GetDouble() > 0);
    }

    [Fact]
    public void BenchDiskDeletesOnlyWhatItCreatedInTheDirectoryItIsGiven()
    {
        using var temp = new TempDir();
        var mine = temp.Sub("notes.txt");
        File.WriteAllText(mine, "the user's file");
        var run = ChildProcess.Bench("disk", "--layers", "2", "--kv-heads", "1", "--head-size", "16", "--chunk-tokens", "16", "--chunks", "8", "--rounds", "1", "--dir", temp.Path, "--json");
        Assert.True(run.ExitCode == 0, run.StdErr);
        Assert.True(JsonDocument.Parse(run.StdOut).RootElement.GetProperty("get_over_memcpy").GetDouble() > 0);
        Assert.Equal("the user's file", File.ReadAllText(mine));
        Assert.Equal([mine], Directory.GetFileSystemEntries(temp.Path));
    }
}
