using BenchmarkDotNet.Attributes;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;

namespace OrtKvTier.Benchmarks;

/// <summary>A KV shape as it reads in the results table.</summary>
public sealed record Shape(string Name, int Layers, int KvHeads, int HeadSize)
{
    public override string ToString() => Name;
}

/// <summary>
/// Verified get and put of one 128-token chunk against a plain copy of the same bytes.
/// Run: <c>dotnet run -c Release --project tests/OrtKvTier.Benchmarks -- --filter '*SlotPool*'</c>
/// </summary>
[MemoryDiagnoser]
public class SlotPoolBenchmarks
{
    private string _dir = "";
    private SlotPool _pool = null!;
    private byte[] _payload = [];
    private byte[] _destination = [];
    private int[] _tokens = [];
    private int _next;

    public static IEnumerable<Shape> Shapes() =>
    [
        new("Qwen2.5-0.5B-like 24x2x64", 24, 2, 64),
        new("Llama-3-8B-like 32x8x128", 32, 8, 128),
    ];

    [ParamsSource(nameof(Shapes))]
    public Shape Layout { get; set; } = null!;

    [GlobalSetup]
    public void Setup()
    {
        var identity = SlotPoolIdentity.For(new ModelFingerprint(7), new KvShape(Layout.Layers, Layout.KvHeads, Layout.HeadSize, 2), chunkTokens: 128);
        _dir = Path.Combine(Path.GetTempPath(), "ortkv-bdn-" + Guid.NewGuid().ToString("N"));
        _pool = SlotPool.Open(new SlotPoolOptions { Directory = _dir, Identity = identity, CapacitySlots = 16, Durability = Durability.None });
        _payload = new byte[identity.PayloadBytes];
        new Random(1).NextBytes(_payload);
        _destination = GC.AllocateUninitializedArray<byte>(_payload.Length, pinned: true);
        _tokens = Enumerable.Range(0, 128).ToArray();
        _pool.Put(new ChunkKey(1), _tokens, _payload);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pool.Dispose();
        Directory.Delete(_dir, true);
    }

    [Benchmark(Baseline = true)]
    public void Memcpy() => _payload.AsSpan().CopyTo(_destination);

    [Benchmark]
    public bool VerifiedGet() => _pool.TryGet(new ChunkKey(1), _tokens, _destination, out _);

    [Benchmark]
    public bool Put() => _pool.Put(new ChunkKey((UInt128)(1000 + _next++ % 8)), _tokens, _payload) || _pool.Remove(new ChunkKey((UInt128)(1000 + (_next - 1) % 8)));
}
