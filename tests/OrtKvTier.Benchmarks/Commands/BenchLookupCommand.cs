using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using OrtKvTier.Keys;
using OrtKvTier.Model;
using OrtKvTier.Storage;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench lookup</c>: the index lookups of a restore (a 64-chunk prompt: 64 hits, then the miss that ends the
/// chain) by a process that has the pool open, against pools whose journals hold 10k and 100k records (never
/// compacted), while another process's writes keep appending to the journal, or not. A lookup's cost must not grow
/// with the journal.
/// </summary>
internal static class BenchLookupCommand
{
    public const string Usage =
        "  lookup [--records 10000,100000] [--chunks 64] [--reps N] [--dir DIR] [--json]   (a 64-chunk prompt's lookups against journals of that many records)";

    public static int Run(CommandLine cl)
    {
        var sizes = (cl.String("records") ?? "10000,100000").Split(',').Select(s => int.Parse(s, CultureInfo.InvariantCulture)).ToArray();
        int chunks = cl.Int("chunks", 64, 1);
        int reps = cl.Int("reps", 2000, 10);
        var root = cl.String("dir") ?? Path.GetTempPath();
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        var identity = SlotPoolIdentity.For(new ModelFingerprint(0x100C), new KvShape(2, 2, 16, 2), chunkTokens: 32);
        var secret = RandomNumberGenerator.GetBytes(32);
        var rows = new List<(int Records, long JournalBytes, double OpenMs, double QuietUs, double BusyUs)>();
        foreach (int records in sizes)
        {
            var dir = Path.Combine(root, $"ortkv-bench-lookup-{records}-{Guid.NewGuid().ToString("N")[..8]}");
            try
            {
                var options = new SlotPoolOptions
                {
                    Directory = dir, Identity = identity, CapacitySlots = 4096, Durability = Durability.None, SecretKey = secret,
                    CompactAfterRecords = long.MaxValue, WriterLockTimeout = TimeSpan.FromSeconds(10),
                };
                var prompt = Enumerable.Range(0, chunks).Select(i => Key(1, i)).ToArray();
                using var writer = SlotPool.Open(options);
                var payload = RandomNumberGenerator.GetBytes((int)identity.PayloadBytes);
                // Fill the journal: puts that evict (reserve, remove, put records), then the prompt's chunks, then touches.
                for (long i = 0; i < 6000 && writer.GetStats().JournalRecords < records - 4 * chunks; i++) writer.Put(Key(2, i), Tokens, payload);
                foreach (var key in prompt) writer.Put(key, Tokens, payload);
                while (writer.GetStats().JournalRecords < records)
                {
                    writer.Touch(prompt);
                    writer.Flush();
                }
                long journalBytes = new FileInfo(Path.Combine(dir, StoredFormats.JournalFileName)).Length;

                var clock = Stopwatch.StartNew();
                using var reader = SlotPool.Open(options with { ReadOnly = true });
                double openMs = clock.Elapsed.TotalMilliseconds;
                var miss = Key(3, 0);
                double Lookup()
                {
                    long start = Stopwatch.GetTimestamp();
                    foreach (var key in prompt)
                        if (!reader.Contains(key)) throw new InvalidOperationException($"chunk {key} of the prompt is not indexed");
                    if (reader.Contains(miss)) throw new InvalidOperationException("the miss was found");
                    return Stopwatch.GetElapsedTime(start).TotalMicroseconds;
                }
                for (int i = 0; i < 50; i++) Lookup();
                var quiet = Enumerable.Range(0, reps).Select(_ => Lookup()).ToList();
                // Another writer stores meanwhile (evicting older entries): each lookup's miss reads what was appended since.
                using var stop = new CancellationTokenSource();
                long appended = writer.GetStats().JournalRecords;
                var appending = Task.Run(() =>
                {
                    for (long i = 0; !stop.IsCancellationRequested; i++) writer.Put(Key(4, i), Tokens, payload);
                });
                var busy = Enumerable.Range(0, reps).Select(_ => Lookup()).ToList();
                stop.Cancel();
                appending.Wait();
                appended = writer.GetStats().JournalRecords - appended;
                rows.Add((records, journalBytes, openMs, BenchModel.Median(quiet), BenchModel.Median(busy)));
                System.Console.Error.WriteLine($"{records} records ({journalBytes / 1e6:F2} MB journal): open {openMs:F1} ms, lookup of a {chunks}-chunk prompt {rows[^1].QuietUs:F1} µs, " +
                    $"{rows[^1].BusyUs:F1} µs while a writer appended {appended} records");
            }
            finally
            {
                BenchModel.TryDelete(dir);
            }
        }

        var first = rows[0];
        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteNumber("chunks", chunks);
                w.WriteStartArray("journals");
                foreach (var r in rows)
                {
                    w.WriteStartObject();
                    w.WriteNumber("records", r.Records);
                    w.WriteNumber("journal_bytes", r.JournalBytes);
                    w.WriteNumber("open_ms", Math.Round(r.OpenMs, 2));
                    w.WriteNumber("lookup_us", Math.Round(r.QuietUs, 2));
                    w.WriteNumber("lookup_while_appending_us", Math.Round(r.BusyUs, 2));
                    w.WriteNumber("lookup_over_smallest", Math.Round(r.QuietUs / first.QuietUs, 3));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
        {
            System.Console.WriteLine($"{"records",8} {"journal_MB",10} {"open_ms",8} {"lookup_us",10} {"appending_us",13} {"vs_first",9}");
            foreach (var r in rows)
                System.Console.WriteLine($"{r.Records,8} {r.JournalBytes / 1e6,10:F2} {r.OpenMs,8:F1} {r.QuietUs,10:F1} {r.BusyUs,13:F1} {r.QuietUs / first.QuietUs,9:F2}");
        }
        return 0;
    }

    private static readonly int[] Tokens = Enumerable.Range(0, 32).ToArray();

    private static ChunkKey Key(int seed, long i) => new(new UInt128((ulong)seed, (ulong)i));
}
