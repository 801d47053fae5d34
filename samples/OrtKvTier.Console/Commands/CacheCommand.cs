using OrtKvTier.Tensors;
using System.Text.Json;
using OrtKvTier.Storage;

namespace OrtKvTier.Console.Commands;

/// <summary><c>cache list|stats|verify|prune|clear</c>: see, check, trim or empty the slot pools under a cache directory.</summary>
internal static class CacheCommand
{
    public static int Run(string action, CommandLine cl)
    {
        // The same directory a generation with these options uses (a shared directory: this user's part of it).
        var dir = OrtKvTier.Cache.PrefixCacheOptions.DirectoryFor(cl.String("cache-dir") ?? OrtKvTier.Cache.PrefixCacheOptions.DefaultDirectory);
        bool json = cl.Flag("json");
        if (action == "prune") return Prune(dir, cl, json);
        cl.RejectUnknown();
        if (action is not ("list" or "stats" or "verify" or "clear")) throw new UsageException($"cache expects list, stats, verify, prune or clear; got '{action}'.");
        if (action == "list") return List(dir, json);
        var pools = FindPools(dir);
        if (pools.Count == 0) throw new UsageException($"No slot pool under {Path.GetFullPath(dir)} (looked for slots.bin in it and its subdirectories); `ortkv cache list` shows the pools of the default directory.");

        var results = new List<(SlotPoolStats Stats, SlotPoolVerifyReport? Report)>();
        int skipped = 0;
        var otherKeys = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var poolDir in pools)
        {
            if (OtherVersion(poolDir) is { } other)
            {
                System.Console.Error.WriteLine($"skipped {poolDir}: {other}");
                continue;
            }
            try
            {
                using var pool = SlotPool.OpenExisting(poolDir, readOnly: action != "clear");
                SlotPoolVerifyReport? report = null;
                if (action == "verify") report = pool.Verify();
                // A pool the cache named after another key: nothing in it authenticates under this one.
                if (action == "verify" && OtherKey(poolDir, pool.KeyId) is { } otherKey) otherKeys[pool.Directory] = otherKey;
                if (action == "clear") pool.Clear();
                results.Add((pool.GetStats(), report));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                // One unreadable pool (a planted link or FIFO, another user's files) does not stop the others.
                System.Console.Error.WriteLine($"skipped {poolDir}: {e.Message}");
                skipped++;
            }
        }

        if (json) JsonOutput.Write(w => WriteJson(w, action, results));
        else
            foreach (var (stats, report) in results)
            {
                System.Console.WriteLine($"{stats.Directory}");
                System.Console.WriteLine($"  model {stats.Identity.Fingerprint}, {stats.Identity.LayoutText}");
                System.Console.WriteLine($"  {stats.Entries} entries in {stats.SlotCount} slots of {stats.SlotBytes} bytes ({stats.FileBytes / 1e6:F1} MB file, {stats.PayloadBytes / 1e6:F1} MB of KV)");
                System.Console.WriteLine($"  {stats.Identity.Encoding.ToString().ToLowerInvariant()}: {StoredBytesPerToken(stats):F0} bytes per token stored ({stats.Identity.ExactPayloadBytes / stats.Identity.ChunkTokens} exact), {SlotBytesPerToken(stats):F0} per token with the slot's header and alignment: {EntriesPerGiB(stats):F0} entries per GiB of pool");
                if (report is not null)
                {
                    System.Console.WriteLine($"  verified {report.Checked}: {report.Valid} valid, {report.Dropped} dropped, {report.BytesVerified / 1e9 / Math.Max(report.Elapsed.TotalSeconds, 1e-9):F2} GB/s");
                    if (otherKeys.GetValueOrDefault(stats.Directory) is { } other)
                        System.Console.WriteLine($"  written under another key (key id {other}; this process's key is another): nothing in it can be checked or used. Set the key that wrote it (ORTKV_CACHE_KEY), or `ortkv cache prune` it.");
                    else if (report.SkippedRecords > 0)
                        System.Console.WriteLine(report.Checked == 0
                            ? $"  none of its {report.SkippedRecords} index records authenticate under this process's key: the pool was written under another key (ORTKV_CACHE_KEY, or the cache.key beside it, was replaced), or its index was forged"
                            : $"  {report.SkippedRecords} index records did not authenticate under this key and were ignored");
                }
                if (action == "clear") System.Console.WriteLine("  cleared");
            }
        // 3: something could not be vouched for (damage dropped, records that do not authenticate under this key).
        return otherKeys.Count > 0 || results.Any(r => r.Report is { Dropped: > 0 } or { SkippedRecords: > 0 }) ? 3 : skipped > 0 ? 1 : 0;
    }

    private static double StoredBytesPerToken(SlotPoolStats s) => (double)s.Identity.PayloadBytes / s.Identity.ChunkTokens;

    private static double SlotBytesPerToken(SlotPoolStats s) => (double)s.SlotBytes / s.Identity.ChunkTokens;

    private static double EntriesPerGiB(SlotPoolStats s) => (1L << 30) / (double)s.SlotBytes;

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
            w.WriteString("encoding", s.Identity.Encoding.ToString().ToLowerInvariant());
            w.WriteNumber("stored_bytes_per_token", Math.Round(StoredBytesPerToken(s), 2));
            w.WriteNumber("slot_bytes_per_token", Math.Round(SlotBytesPerToken(s), 2));
            w.WriteNumber("entries_per_gib", Math.Round(EntriesPerGiB(s), 1));
            if (r is not null)
            {
                w.WriteNumber("checked", r.Checked);
                w.WriteNumber("valid", r.Valid);
                w.WriteNumber("dropped", r.Dropped);
                w.WriteNumber("unauthenticated_records", r.SkippedRecords);
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    /// <summary>Pools by last use, most recent first: model, layout, entries, bytes of KV held and of disk taken.</summary>
    private static int List(string dir, bool json)
    {
        var pools = PoolsByLastUse(dir);
        var rows = new List<(string Dir, DateTime LastUse, SlotPoolStats Stats, string? OtherKey)>();
        var unreadable = new List<(string Dir, string Why)>();
        foreach (var (poolDir, lastUse) in pools)
        {
            if (OtherVersion(poolDir) is { } other)
            {
                unreadable.Add((poolDir, other));
                continue;
            }
            try
            {
                using var pool = SlotPool.OpenExisting(poolDir);
                rows.Add((poolDir, lastUse, pool.GetStats(), OtherKey(poolDir, pool.KeyId)));
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                unreadable.Add((poolDir, e.Message));
            }
        }
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteStartArray("pools");
                foreach (var (poolDir, lastUse, s, _) in rows)
                {
                    w.WriteStartObject();
                    w.WriteString("directory", poolDir);
                    w.WriteString("fingerprint", s.Identity.Fingerprint.ToString());
                    w.WriteString("layout", s.Identity.LayoutText);
                    w.WriteNumber("entries", s.Entries);
                    w.WriteNumber("payload_bytes", s.PayloadBytes);
                    w.WriteNumber("capacity_bytes", s.FileBytes);
                    w.WriteString("last_use", lastUse.ToString("O", System.Globalization.CultureInfo.InvariantCulture));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteStartArray("unreadable");
                foreach (var (poolDir, why) in unreadable)
                {
                    w.WriteStartObject();
                    w.WriteString("directory", poolDir);
                    w.WriteString("reason", why);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            foreach (var (poolDir, lastUse, s, otherKey) in rows)
                System.Console.WriteLine($"{poolDir}\n  model {s.Identity.Fingerprint}, {s.Identity.LayoutText}: {s.Entries} entries, {s.PayloadBytes / 1e6:F1} MB of KV (capacity {s.FileBytes / 1e6:F1} MB), last used {lastUse:u}" +
                    (otherKey is { } other ? $"\n  written under another key ({other}): unusable by this process; `ortkv cache prune --other-keys` removes it" : ""));
            foreach (var (poolDir, why) in unreadable) System.Console.WriteLine($"{poolDir}\n  unreadable: {why}");
            if (rows.Count == 0 && unreadable.Count == 0) System.Console.WriteLine($"No slot pool under {Path.GetFullPath(dir)}.");
        }
        return 0;
    }

    /// <summary>Deletes whole pools, least recently used first: those unused for longer than --older-than, or all but the --keep most recent. A pool another process is changing (it holds the writer lock) is kept; one that is only open goes on in that process's open files.</summary>
    private static int Prune(string dir, CommandLine cl, bool json)
    {
        var olderThan = cl.String("older-than") is { } text ? CacheOptions.Duration("older-than", text) : (TimeSpan?)null;
        var keepText = cl.String("keep");
        int? keep = keepText is null ? null : cl.Int("keep", 0, min: 0);
        bool otherVersions = cl.Flag("other-versions");
        bool otherKeys = cl.Flag("other-keys");
        cl.RejectUnknown();
        if ((olderThan is null ? 0 : 1) + (keep is null ? 0 : 1) + (otherVersions ? 1 : 0) + (otherKeys ? 1 : 0) != 1)
            throw new UsageException("cache prune needs exactly one of --older-than DURATION (e.g. 30d), --keep N, --other-versions or --other-keys.");
        var pools = PoolsByLastUse(dir);
        var doomed = otherVersions ? pools.Where(p => OtherVersion(p.Dir) is not null)
            : otherKeys ? pools.Where(p => OtherKeyOfPool(p.Dir) is not null)
            : keep is { } n ? pools.Skip(n) : pools.Where(p => DateTime.UtcNow - p.LastUse > olderThan);
        var deleted = new List<string>();
        var inUse = new List<string>();
        var refused = new List<(string Dir, string Why)>();
        foreach (var (poolDir, _) in doomed)
        {
            try
            {
                (SlotPool.TryDelete(poolDir) ? deleted : inUse).Add(poolDir);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                refused.Add((poolDir, e.Message));
            }
        }
        foreach (var (poolDir, why) in refused) System.Console.Error.WriteLine($"kept {poolDir}: {why}");
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteStartArray("deleted");
                foreach (var d in deleted) w.WriteStringValue(d);
                w.WriteEndArray();
                w.WriteStartArray("in_use");
                foreach (var d in inUse) w.WriteStringValue(d);
                w.WriteEndArray();
            });
        else
        {
            foreach (var d in deleted) System.Console.WriteLine($"deleted {d}");
            foreach (var d in inUse) System.Console.WriteLine($"kept {d}: another process is changing it");
            if (deleted.Count + inUse.Count == 0) System.Console.WriteLine($"Nothing to prune: {pools.Count} pool{(pools.Count == 1 ? "" : "s")} under {Path.GetFullPath(dir)}, none matched.");
        }
        return 0;
    }

    /// <summary>The key id a pool's directory names when it is not <paramref name="openedKeyId"/>, the key this process opened it with (the pool was written under another key), or null.</summary>
    private static string? OtherKey(string poolDir, string openedKeyId) =>
        OrtKvTier.Cache.PrefixCacheOptions.KeyIdOfPool(poolDir) is { } named && named != openedKeyId ? named : null;

    /// <summary><see cref="OtherKey"/> of a pool not yet open; null when it cannot be opened (prune leaves it to the other criteria).</summary>
    private static string? OtherKeyOfPool(string poolDir)
    {
        try
        {
            using var pool = SlotPool.OpenExisting(poolDir);
            return OtherKey(poolDir, pool.KeyId);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>Why the pool in <paramref name="poolDir"/> cannot be read by this build (another format version), or null.</summary>
    private static string? OtherVersion(string poolDir)
    {
        try
        {
            SlotPool.ReadIdentity(poolDir);
            return null;
        }
        catch (IOException e) when (SlotPool.FoundVersion(e) is not null)
        {
            return e.Message;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // not a version matter: opening the pool says what it is
        }
    }

    private static List<(string Dir, DateTime LastUse)> PoolsByLastUse(string dir) =>
        [.. FindPools(dir).Select(p => (Dir: p, LastUse: SlotPool.Usage(p).LastWrite)).OrderByDescending(p => p.LastUse)];

    /// <summary>The pools under the cache directory (or the directory itself when it is one), found by the pool's own file layer: no link is followed.</summary>
    private static IReadOnlyList<string> FindPools(string dir)
    {
        try
        {
            return SlotPool.FindAll(dir);
        }
        catch (IOException e)
        {
            throw new UsageException(e.Message);
        }
    }
}
