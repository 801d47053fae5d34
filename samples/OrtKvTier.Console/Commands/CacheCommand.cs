using System.Text.Json;
using OrtKvTier.Storage;

namespace OrtKvTier.Console.Commands;

/// <summary><c>cache stats|verify|clear</c>: inspect, check or empty the slot pools under a cache directory.</summary>
internal static class CacheCommand
{
    public const string Usage = "cache stats|verify|clear --cache-dir DIR [--json]";

    public static int Run(string action, CommandLine cl)
    {
        var dir = cl.String("cache-dir") ?? throw new UsageException("cache needs --cache-dir DIR.");
        bool json = cl.Flag("json");
        cl.RejectUnknown();
        if (action is not ("stats" or "verify" or "clear")) throw new UsageException($"cache expects stats, verify or clear; got '{action}'.");
        var pools = FindPools(dir);
        if (pools.Count == 0) throw new UsageException($"No slot pool under {Path.GetFullPath(dir)} (looked for slots.bin in it and its subdirectories).");

        var results = new List<(SlotPoolStats Stats, SlotPoolVerifyReport? Report)>();
        foreach (var poolDir in pools)
        {
            using var pool = SlotPool.OpenExisting(poolDir, readOnly: action != "clear");
            SlotPoolVerifyReport? report = null;
            if (action == "verify") report = pool.Verify();
            if (action == "clear") pool.Clear();
            results.Add((pool.GetStats(), report));
        }

        if (json) JsonOutput.Write(w => WriteJson(w, action, results));
        else
            foreach (var (stats, report) in results)
            {
                System.Console.WriteLine($"{stats.Directory}");
                System.Console.WriteLine($"  model {stats.Identity.Fingerprint}, {stats.Identity.LayoutText}");
                System.Console.WriteLine($"  {stats.Entries} entries in {stats.SlotCount} slots of {stats.SlotBytes} bytes ({stats.FileBytes / 1e6:F1} MB file, {stats.PayloadBytes / 1e6:F1} MB of KV)");
                if (report is not null)
                    System.Console.WriteLine($"  verified {report.Checked}: {report.Valid} valid, {report.Dropped} dropped, {report.BytesVerified / 1e9 / Math.Max(report.Elapsed.TotalSeconds, 1e-9):F2} GB/s");
                if (action == "clear") System.Console.WriteLine("  cleared");
            }
        return results.Any(r => r.Report is { Dropped: > 0 }) ? 3 : 0;
    }

    private static void WriteJson(Utf8JsonWriter w, string action, List<(SlotPoolStats Stats, SlotPoolVerifyReport? Report)> results)
    {
        w.WriteString("action", action);
        w.WriteStartArray("pools");
        foreach (var (s, r) in results)
        {
            w.WriteStartObject();
            w.WriteString("directory", s.Directory);
            w.WriteString("fingerprint", s.Identity.Fingerprint.ToString());
            w.WriteString("layout", s.Identity.LayoutText);
            w.WriteNumber("entries", s.Entries);
            w.WriteNumber("slots", s.SlotCount);
            w.WriteNumber("slot_bytes", s.SlotBytes);
            w.WriteNumber("file_bytes", s.FileBytes);
            w.WriteNumber("payload_bytes", s.PayloadBytes);
            if (r is not null)
            {
                w.WriteNumber("checked", r.Checked);
                w.WriteNumber("valid", r.Valid);
                w.WriteNumber("dropped", r.Dropped);
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static List<string> FindPools(string dir)
    {
        if (!Directory.Exists(dir)) return [];
        if (File.Exists(Path.Combine(dir, "slots.bin"))) return [dir];
        return Directory.GetDirectories(dir).Where(d => File.Exists(Path.Combine(d, "slots.bin"))).Order(StringComparer.Ordinal).ToList();
    }
}
