using System.Buffers.Binary;
using System.Diagnostics.Metrics;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using OrtKvTier.Cache;
using OrtKvTier.Tiers;
using OrtKvTier.Diagnostics;
using OrtKvTier.Generation;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Tests.Support;

/// <summary>What one greedy run produced: the logits after the prompt, the generated tokens, and what the cache restored.</summary>
internal sealed record GreedyRun(float[] Logits, int[] Tokens, PrefixRestoreReport Restore)
{
    public bool LogitsBitwiseEqual(GreedyRun other) =>
        MemoryMarshal.AsBytes(Logits.AsSpan()).SequenceEqual(MemoryMarshal.AsBytes(other.Logits.AsSpan()));
}

internal static class CacheTestKit
{
    /// <summary>Deterministic prompt token ids, clear of the tiny models' special tokens.</summary>
    public static int[] Prompt(int length, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, length).Select(_ => random.Next(3, 500)).ToArray();
    }

    /// <summary>Prompt, logits, <paramref name="newTokens"/> greedy tokens, capture into the cache (if any).</summary>
    public static GreedyRun Greedy(KvModel model, int[] prompt, PrefixCache? cache, int newTokens = 6, string? tenant = null)
    {
        var search = SearchOptions.FromConfig(model) with { MaxLength = prompt.Length + newTokens, DoSample = false };
        using var generator = new KvGenerator(model, search, cache, tenant);
        generator.AppendTokens(prompt);
        var logits = generator.GetLogits().ToArray();
        generator.CaptureToCache();
        var tokens = new List<int>();
        while (!generator.IsDone) tokens.Add(generator.GenerateNextToken());
        return new GreedyRun(logits, tokens.ToArray(), generator.LastRestore);
    }

    public static PrefixCache Open(KvModel model, string? directory, int chunkTokens = 16, long hostBytes = 64L << 20, ILogger? logger = null,
        LowerTierWrites writes = LowerTierWrites.WriteThrough, bool encrypt = false, IReadOnlyList<IKvChunkTier>? extraTiers = null) =>
        PrefixCache.Open(model, new PrefixCacheOptions
        {
            Directory = directory, ChunkTokens = chunkTokens, HostBudgetBytes = hostBytes, DiskCapacityBytes = 32L << 20,
            Logger = logger, LowerTierWrites = writes, EncryptAtRest = encrypt, ExtraTiers = extraTiers ?? [], AlwaysRestore = true,
        });

    /// <summary>Flips a payload byte of the slot holding <paramref name="key"/> (found by its key bytes in the slot headers).</summary>
    public static void DamageSlotOf(DiskTier disk, ChunkKey key)
    {
        long at = KeyOffset(disk, key, out var path);
        long slot = (at - StoredFormats.FileHeaderBytes) / disk.Pool.SlotBytes;
        long payload = StoredFormats.FileHeaderBytes + slot * disk.Pool.SlotBytes + StoredFormats.SlotHeaderBytes(disk.Pool.Identity.ChunkTokens);
        SlotFileDamage.FlipAt(path, payload + 100);
    }

    /// <summary>Flips a byte of the key in the header of the slot holding <paramref name="key"/>.</summary>
    public static void DamageSlotHeaderOf(DiskTier disk, ChunkKey key) => SlotFileDamage.FlipAt(Path.Combine(disk.Pool.Directory, StoredFormats.DataFileName), KeyOffset(disk, key, out _));

    private static long KeyOffset(DiskTier disk, ChunkKey key, out string path)
    {
        path = Path.Combine(disk.Pool.Directory, StoredFormats.DataFileName);
        var bytes = File.ReadAllBytes(path);
        Span<byte> needle = stackalloc byte[16];
        BinaryPrimitives.WriteUInt128LittleEndian(needle, key.Value);
        int at = bytes.AsSpan().IndexOf(needle);
        Assert.True(at >= 0, $"chunk {key} not found in {path}");
        return at;
    }
}

/// <summary>An ILogger that keeps what it is told.</summary>
internal sealed class ListLogger : ILogger
{
    private readonly List<(LogLevel Level, string Message)> _entries = [];

    public IReadOnlyList<(LogLevel Level, string Message)> Entries
    {
        get { lock (_entries) return _entries.ToList(); }
    }

    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;

    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        lock (_entries) _entries.Add((logLevel, formatter(state, exception)));
    }
}

/// <summary>Sums the OrtKvTier meter's counters by instrument and tag while alive.</summary>
internal sealed class MetricsRecorder : IDisposable
{
    private readonly MeterListener _listener = new();
    private readonly Dictionary<string, double> _sums = [];

    public MetricsRecorder()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == KvCacheMetrics.MeterName) listener.EnableMeasurementEvents(instrument);
        };
        _listener.SetMeasurementEventCallback<long>((i, v, tags, _) => Add(i, v, tags));
        _listener.SetMeasurementEventCallback<double>((i, v, tags, _) => Add(i, v, tags));
        _listener.Start();
    }

    /// <summary>Sum for an instrument, optionally only measurements tagged <paramref name="tag"/>=<paramref name="value"/>; histograms count samples.</summary>
    public double Sum(string instrument, string? tag = null, string? value = null)
    {
        lock (_sums) return _sums.GetValueOrDefault(Key(instrument, tag, value));
    }

    private void Add(Instrument instrument, double value, ReadOnlySpan<KeyValuePair<string, object?>> tags)
    {
        double amount = instrument is Histogram<double> ? 1 : value;
        lock (_sums)
        {
            _sums[Key(instrument.Name, null, null)] = _sums.GetValueOrDefault(Key(instrument.Name, null, null)) + amount;
            foreach (var tag in tags)
            {
                var key = Key(instrument.Name, tag.Key, tag.Value?.ToString());
                _sums[key] = _sums.GetValueOrDefault(key) + amount;
            }
        }
    }

    private static string Key(string instrument, string? tag, string? value) => tag is null ? instrument : $"{instrument}|{tag}={value}";

    public void Dispose() => _listener.Dispose();
}
