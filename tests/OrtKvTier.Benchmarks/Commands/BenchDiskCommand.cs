using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Security;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench disk</c>: put and verified-get throughput of the slot pool (entries authenticated, and authenticated
/// and encrypted) and the MAC alone beside a one-thread memcpy of the same bytes, measured in the same run, plus the
/// time to open the pool it wrote and one of 10k entries.
/// </summary>
internal static class BenchDiskCommand
{
    public const string Usage =
        "  disk --layers L --kv-heads H --head-size D --chunk-tokens C --chunks N [--dtype fp16|fp32]\n" +
        "    [--durability none|batched|every] [--dir DIR] [--rounds R] [--json]   (put: rewrite of a full pool; first_fill: fresh file)";

    /// <summary>The pools' key (given, so no key file is created beside them in the user's directory).</summary>
    private static readonly byte[] BenchKey = RandomNumberGenerator.GetBytes(32);

    public static int Run(CommandLine cl)
    {
        int elementSize = (cl.String("dtype") ?? "fp16") switch
        {
            "fp16" => 2,
            "fp32" => 4,
            var d => throw new UsageException($"--dtype expects fp16 or fp32; got '{d}'."),
        };
        var identity = SlotPoolIdentity.For(new ModelFingerprint(0xB3AC4),
            new KvShape(cl.Int("layers", 24, 1), cl.Int("kv-heads", 2, 1), cl.Int("head-size", 64, 1), elementSize), cl.Int("chunk-tokens", 128, 1));
        int chunks = cl.Int("chunks", 1000, 1);
        int rounds = cl.Int("rounds", 3, 1);
        var durability = (cl.String("durability") ?? "none") switch
        {
            "none" => Durability.None,
            "batched" => Durability.Batched,
            "every" => Durability.EveryWrite,
            var d => throw new UsageException($"--durability expects none, batched or every; got '{d}'."),
        };
        var dir = cl.String("dir") ?? Path.Combine(Path.GetTempPath(), "ortkv-bench-disk-" + Environment.ProcessId);
        bool json = cl.Flag("json");
        cl.RejectUnknown();

        int payloadBytes = checked((int)identity.PayloadBytes);
        long totalBytes = (long)payloadBytes * chunks;
        // Distinct source buffers (up to 64) so neither side reads one cache-hot buffer.
        var sources = Enumerable.Range(0, Math.Min(chunks, 64)).Select(_ => RandomNumberGenerator.GetBytes(payloadBytes)).ToArray();
        var tokens = Enumerable.Range(0, identity.ChunkTokens).ToArray();
        var destination = GC.AllocateUninitializedArray<byte>(payloadBytes, pinned: true);
        ChunkKey KeyOf(int i) => new(new UInt128(0xC4A2, (ulong)i));

        // Only what this run creates is ever deleted: its own subdirectories, never the rest of a --dir the user gave.
        string[] own = [Path.Combine(dir, "auth"), Path.Combine(dir, "encrypted"), Path.Combine(dir, "10k")];
        foreach (var path in own)
            if (Directory.Exists(path) || File.Exists(path))
                throw new UsageException($"{path} exists; bench disk writes its pools there and deletes them after. Give an empty --dir or move it away.");
        bool ownDir = !Directory.Exists(dir);
        try
        {
            // Two pools in one run: entries authenticated (the default), and authenticated and encrypted.
            var options = new SlotPoolOptions { Directory = Path.Combine(dir, "auth"), Identity = identity, CapacitySlots = chunks, Durability = durability, SecretKey = BenchKey };
            var encryptedOptions = options with { Directory = Path.Combine(dir, "encrypted"), Encrypt = true };
            double getSeconds = double.MaxValue, encryptedGetSeconds = double.MaxValue, memcpySeconds = double.MaxValue, macSeconds = double.MaxValue;
            var seal = CacheSecret.CreateRandom().SealFor(CacheSecret.NewEntryNonce(), encrypted: false);
            var tag = new byte[StoredFormats.MacBytes];
            double fillSeconds, putSeconds, encryptedPutSeconds;
            using (var pool = SlotPool.Open(options))
            using (var encrypted = SlotPool.Open(encryptedOptions))
            {
                // First fill of the file, then a rewrite of every slot with new keys (a full cache's steady state).
                fillSeconds = Fill(pool, chunks, i => KeyOf(chunks + i), tokens, sources, durability);
                putSeconds = Fill(pool, chunks, KeyOf, tokens, sources, durability);
                Fill(encrypted, chunks, i => KeyOf(chunks + i), tokens, sources, durability);
                encryptedPutSeconds = Fill(encrypted, chunks, KeyOf, tokens, sources, durability);

                for (int round = 0; round < rounds; round++)
                {
                    // Interleave the measurements so machine noise hits them alike.
                    memcpySeconds = Math.Min(memcpySeconds, Time(() => { for (int i = 0; i < chunks; i++) sources[i % sources.Length].AsSpan().CopyTo(destination); }));
                    macSeconds = Math.Min(macSeconds, Time(() =>
                    {
                        for (int i = 0; i < chunks; i++)
                        {
                            var source = sources[i % sources.Length];
                            for (int at = 0, block = 0; at < source.Length; at += StoredFormats.SealBlockBytes, block++)
                                seal.Tag(block, source.AsSpan(at, Math.Min(StoredFormats.SealBlockBytes, source.Length - at)), tag);
                        }
                    }));
                    getSeconds = Math.Min(getSeconds, Time(() => GetAll(pool, chunks, KeyOf, tokens, destination)));
                    encryptedGetSeconds = Math.Min(encryptedGetSeconds, Time(() => GetAll(encrypted, chunks, KeyOf, tokens, destination)));
                }
            }
            var openClock = Stopwatch.StartNew();
            using (var reopened = SlotPool.Open(options)) { if (reopened.GetStats().Entries != chunks) throw new InvalidOperationException("reopen lost entries"); }
            double openMs = openClock.Elapsed.TotalMilliseconds;
            double open10kMs = OpenTenThousand(Path.Combine(dir, "10k"));

            double Gbps(double seconds) => totalBytes / seconds / 1e9;
            double fillGbps = Gbps(fillSeconds), putGbps = Gbps(putSeconds), getGbps = Gbps(getSeconds), memcpyGbps = Gbps(memcpySeconds);
            double encryptedPutGbps = Gbps(encryptedPutSeconds), encryptedGetGbps = Gbps(encryptedGetSeconds), macGbps = Gbps(macSeconds);
            if (json)
                JsonOutput.Write(w =>
                {
                    w.WriteString("layout", identity.LayoutText);
                    w.WriteNumber("chunks", chunks);
                    w.WriteNumber("chunk_bytes", payloadBytes);
                    w.WriteString("durability", durability.ToString());
                    w.WriteNumber("put_gbps", Math.Round(putGbps, 3));
                    w.WriteNumber("first_fill_gbps", Math.Round(fillGbps, 3));
                    w.WriteNumber("get_gbps", Math.Round(getGbps, 3));
                    w.WriteNumber("put_encrypted_gbps", Math.Round(encryptedPutGbps, 3));
                    w.WriteNumber("get_encrypted_gbps", Math.Round(encryptedGetGbps, 3));
                    w.WriteNumber("mac_1_thread_gbps", Math.Round(macGbps, 3));
                    w.WriteNumber("memcpy_gbps", Math.Round(memcpyGbps, 3));
                    w.WriteNumber("get_over_memcpy", Math.Round(getGbps / memcpyGbps, 3));
                    w.WriteNumber("get_encrypted_over_memcpy", Math.Round(encryptedGetGbps / memcpyGbps, 3));
                    w.WriteNumber("mac_over_memcpy", Math.Round(macGbps / memcpyGbps, 3));
                    w.WriteNumber("open_ms", Math.Round(openMs, 2));
                    w.WriteNumber("open_10k_entries_ms", Math.Round(open10kMs, 2));
                });
            else
            {
                System.Console.WriteLine($"{identity.LayoutText}: {chunks} chunks of {payloadBytes / 1024.0:F0} KiB ({totalBytes / 1e6:F0} MB), durability {durability}");
                System.Console.WriteLine($"  put (rewrite)            {putGbps,7:F2} GB/s   encrypted {encryptedPutGbps,7:F2} GB/s");
                System.Console.WriteLine($"  put (1st fill)           {fillGbps,7:F2} GB/s");
                System.Console.WriteLine($"  verified get (MAC)       {getGbps,7:F2} GB/s   ({getGbps / memcpyGbps:F2}× memcpy)");
                System.Console.WriteLine($"  verified get (MAC+AES)   {encryptedGetGbps,7:F2} GB/s   ({encryptedGetGbps / memcpyGbps:F2}× memcpy)");
                System.Console.WriteLine($"  MAC alone, 1 thread      {macGbps,7:F2} GB/s   ({macGbps / memcpyGbps:F2}× memcpy)");
                System.Console.WriteLine($"  memcpy 1 thread          {memcpyGbps,7:F2} GB/s");
                System.Console.WriteLine($"  open ({chunks} entries) {openMs:F1} ms; open (10k entries) {open10kMs:F1} ms");
            }
            return 0;
        }
        finally
        {
            foreach (var path in own) BenchModel.TryDelete(path);
            if (ownDir) BenchModel.TryDelete(dir);
        }
    }

    private static double Time(Action action) => BenchModel.Time(action).TotalSeconds;

    /// <summary>Stores <paramref name="chunks"/> entries (flushed unless durability is none); returns seconds.</summary>
    private static double Fill(SlotPool pool, int chunks, Func<int, ChunkKey> keyOf, int[] tokens, byte[][] sources, Durability durability) => Time(() =>
    {
        for (int i = 0; i < chunks; i++) pool.Put(keyOf(i), tokens, sources[i % sources.Length]);
        if (durability != Durability.None) pool.Flush();
    });

    private static void GetAll(SlotPool pool, int chunks, Func<int, ChunkKey> keyOf, int[] tokens, byte[] destination)
    {
        for (int i = 0; i < chunks; i++)
            if (!pool.TryGet(keyOf(i), tokens, destination, out _)) throw new InvalidOperationException($"chunk {i} missing");
    }

    /// <summary>Opens a pool of 10,000 small entries written earlier in the run; returns milliseconds.</summary>
    private static double OpenTenThousand(string dir)
    {
        var identity = SlotPoolIdentity.For(new ModelFingerprint(0x10C), new KvShape(1, 1, 16, 2), chunkTokens: 16);
        var options = new SlotPoolOptions { Directory = dir, Identity = identity, CapacitySlots = 10_000, Durability = Durability.None, SecretKey = BenchKey };
        var payload = new byte[identity.PayloadBytes];
        var tokens = new int[16];
        using (var pool = SlotPool.Open(options))
            for (int i = 0; i < 10_000; i++) pool.Put(new ChunkKey((UInt128)i), tokens, payload);
        var clock = Stopwatch.StartNew();
        using var reopened = SlotPool.Open(options);
        var elapsed = clock.Elapsed.TotalMilliseconds;
        if (reopened.GetStats().Entries != 10_000) throw new InvalidOperationException("reopen lost entries");
        return elapsed;
    }
}
