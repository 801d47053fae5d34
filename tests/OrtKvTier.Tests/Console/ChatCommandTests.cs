using System.Text.RegularExpressions;
using OrtKvTier.Tests.Support;

namespace OrtKvTier.Tests.Console;

public sealed class ChatCommandTests
{
    [Fact]
    public void TheReplStreamsAnswersReportsCachedTokensAndResets()
    {
        using var temp = new TempDir();
        var (code, stdout, stderr) = ChildProcess.ConsoleWithInput("hello there\nwhat next?\n/reset\nhello there\n/exit\n",
            "chat", "--system", "You are a helpful assistant for the fox and dog company. Answer briefly.", "--max-new-tokens", "8",
            "--cache-dir", temp.Path, "--cache-size", "16MiB", "--always-restore"); // one chunk of the tiny model costs about what computing it does: the cache may compute it
        Assert.True(code == 0, stderr);
        var turns = Regex.Matches(stdout, @"\[TTFT [\d.]+ ms · (\d+)/(\d+) prompt tokens cached").Select(m => (Cached: int.Parse(m.Groups[1].Value), Prompt: int.Parse(m.Groups[2].Value))).ToArray();
        Assert.Equal(3, turns.Length);
        Assert.Equal(0, turns[0].Cached);
        Assert.True(turns[1].Cached >= turns[0].Prompt / 32 * 32, stdout);   // the second turn reuses the first
        Assert.Equal(turns[0].Prompt, turns[2].Prompt);                    // /reset: the same first prompt again
        Assert.True(turns[2].Cached >= turns[0].Prompt / 32 * 32, stdout);
        Assert.Contains("(conversation reset)", stdout);
    }

    [Fact]
    public void WarmPrefillsADocumentThatChatThenRestoresFromDisk()
    {
        using var temp = new TempDir();
        var doc = temp.Sub("doc.txt");
        File.WriteAllText(doc, string.Concat(Enumerable.Repeat("Manual: the quick brown fox jumps over the lazy dog again. ", 6)));
        var warm = ChildProcess.Console("warm", "--file", doc, "--cache-dir", temp.Sub("cache"), "--cache-size", "16MiB", "--piece-tokens", "50");
        Assert.True(warm.ExitCode == 0, warm.StdErr);
        Assert.Contains("warmed", warm.StdOut);
        var chat = ChildProcess.ConsoleWithInput("hi\n", "chat", "--system-file", doc, "--max-new-tokens", "4", "--cache-dir", temp.Sub("cache"));
        Assert.True(chat.ExitCode == 0, chat.StdErr);
        var m = Regex.Match(chat.StdOut, @"(\d+)/(\d+) prompt tokens cached \(disk (\d+)\)");
        Assert.True(m.Success, chat.StdOut);
        Assert.True(int.Parse(m.Groups[1].Value) >= 192, chat.StdOut);
    }
}
