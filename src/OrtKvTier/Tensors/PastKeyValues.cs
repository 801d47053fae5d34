using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;

namespace OrtKvTier.Tensors;

/// <summary>
/// The past key/value tensors of one sequence in the model's layout, bound into each run.
/// <see cref="Growing"/> swaps in a fresh <c>[1, kvH, total, D]</c> present per run;
/// <see cref="Shared"/> binds one <c>[1, kvH, max, D]</c> buffer as both past and present.
/// Owned by one generator; not thread-safe.
/// </summary>
internal abstract class PastKeyValues : IKvTensorView, IDisposable
{
    private PastHold? _hold;

    protected PastKeyValues(KvLayout layout, KvMemory memory)
    {
        Layout = layout;
        Memory = memory;
    }

    public KvLayout Layout { get; }

    /// <summary>Where the tensors live; on a device, <see cref="TensorBytes"/> is not available (copy through <see cref="Tensor"/>).</summary>
    public KvMemory Memory { get; }

    /// <summary>Tokens whose keys and values are held.</summary>
    public int Length { get; protected set; }

    public static PastKeyValues Create(KvLayout layout, KvMemory? memory = null) =>
        layout.SharedBuffer ? new Shared(layout, memory ?? KvMemory.Host) : new Growing(layout, memory ?? KvMemory.Host);

    /// <summary>
    /// A past over host tensors someone else owns (<c>[1, kvH, capacity, D]</c> each, key 0, value 0, key 1, …), bound as one
    /// buffer for past and present whatever the folder's KV mode (GroupQueryAttention takes both): a row of a batch.
    /// Disposing it disposes those <see cref="OrtValue"/>s, not the memory under them.
    /// </summary>
    public static PastKeyValues Over(KvLayout layout, OrtValue[] tensors, int capacity) => new Shared(layout, tensors, capacity);

    /// <summary>An empty past with no tensors (a batch row before it has its place): length 0, never bound.</summary>
    public static PastKeyValues Unplaced(KvLayout layout) => new Shared(layout, new OrtValue[layout.Layers * 2], capacity: 0);

    /// <summary>The tensor of one layer's key or value (its first <see cref="Length"/> rows per head are valid, of <see cref="Capacity"/>).</summary>
    public OrtValue Tensor(int layer, bool value) => Current[Slot(layer, value)]!;

    /// <summary>The past tensors in chunk order (key 0, value 0, key 1, …).</summary>
    public OrtValue[] Tensors() => [.. Current.Select(t => t!)];

    /// <summary>
    /// Keeps the current tensors alive for a reader on another thread until the returned hold is
    /// disposed (a tensor replaced meanwhile is handed over to it). The caller must not let rows below
    /// <see cref="Length"/> be rewritten (no <see cref="Truncate"/> or <see cref="PrepareRestore"/>) until then.
    /// </summary>
    public PastHold Hold() => _hold = new PastHold(Tensors(), Capacity);

    /// <summary>The tensors bound as past now, in chunk order.</summary>
    protected abstract OrtValue?[] Current { get; }

    /// <summary>Disposes a past tensor no longer needed here, unless a hold still reads it.</summary>
    protected void Release(OrtValue? tensor)
    {
        if (tensor is not null && _hold?.TakeOver(tensor) != true) tensor.Dispose();
    }

    /// <summary>Releases every tensor of <paramref name="tensors"/> and clears the array.</summary>
    protected void ReleaseAll(OrtValue?[] tensors)
    {
        for (int i = 0; i < tensors.Length; i++)
        {
            Release(tensors[i]);
            tensors[i] = null;
        }
    }

    /// <summary>
    /// Binds each of <paramref name="tensors"/> (key 0, value 0, key 1, …) as both its layer's past input and present output:
    /// GroupQueryAttention's shared buffer, for one sequence or a whole batch.
    /// </summary>
    public static void BindAsPastAndPresent(OrtIoBinding binding, KvLayout layout, IReadOnlyList<OrtValue?> tensors)
    {
        for (int layer = 0; layer < layout.Layers; layer++)
        {
            binding.BindInput(layout.PastKeyNames[layer], tensors[Slot(layer, false)]!);
            binding.BindOutput(layout.PresentKeyNames[layer], tensors[Slot(layer, false)]!);
            binding.BindInput(layout.PastValueNames[layer], tensors[Slot(layer, true)]!);
            binding.BindOutput(layout.PresentValueNames[layer], tensors[Slot(layer, true)]!);
        }
    }

    /// <summary>Binds past inputs and present outputs for a run that adds <paramref name="newTokens"/>.</summary>
    public abstract void Bind(OrtIoBinding binding, int newTokens);

    /// <summary>Makes the presents of the last bound run the past.</summary>
    public abstract void Commit(int newTokens);

    /// <summary>Drops what the last bound run would have produced (it failed).</summary>
    public abstract void Abort();

    /// <summary>Keeps the first <paramref name="length"/> tokens.</summary>
    public abstract void Truncate(int length);

    /// <summary>Makes room for exactly <paramref name="length"/> tokens whose rows the caller is about to write (a restore); their old contents are undefined.</summary>
    public abstract void PrepareRestore(int length);

    /// <summary>Adds <paramref name="rows"/> rows after the current ones, which keep their contents; the caller writes the new ones.</summary>
    public abstract void Extend(int rows);

    /// <summary><see cref="PrepareRestore"/>, then this past as the view a restore writes into: what a restore sink is handed.</summary>
    public IKvTensorView PreparedForRestore(int length)
    {
        PrepareRestore(length);
        return this;
    }

    /// <summary>
    /// The bytes of one layer's key (<paramref name="value"/> false) or value tensor. Rows of
    /// <see cref="KvLayout.BytesPerHeadToken"/>; head h's token t starts at
    /// <c>(h × Capacity + t) × BytesPerHeadToken</c>. Valid until the next Bind, Commit, Truncate or Dispose.
    /// </summary>
    public abstract Span<byte> TensorBytes(int layer, bool value);

    /// <summary>Token rows each head has room for in <see cref="TensorBytes"/>.</summary>
    public abstract int Capacity { get; }

    public abstract void Dispose();

    /// <summary>A new <c>[1, kvH, tokens, D]</c> tensor, its pages mapped up front (cheaper than a fault per page when the run writes it).</summary>
    protected unsafe OrtValue Allocate(int tokens)
    {
        var value = OrtValue.CreateAllocatedTensorValue(Memory.Allocator, Layout.OrtElementType, [1, Layout.KvHeads, tokens, Layout.HeadSize]);
        if (Memory.OnDevice) return value;
        var bytes = value.GetTensorMutableRawData();
        fixed (byte* start = bytes) MemoryAdvice.PopulateWrite(start, bytes.Length);
        return value;
    }

    protected Span<byte> HostBytes(OrtValue value) =>
        Memory.OnDevice ? throw new InvalidOperationException("The past tensors are in device memory; copy them through Tensor().") : value.GetTensorMutableRawData();

    protected static void DisposeAll(OrtValue?[] values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            values[i]?.Dispose();
            values[i] = null;
        }
    }

    /// <summary>Index of a layer's key or value in the per-tensor arrays.</summary>
    protected static int Slot(int layer, bool value) => layer * 2 + (value ? 1 : 0);

    private sealed class Growing : PastKeyValues
    {
        private readonly OrtValue?[] _past;
        private readonly OrtValue?[] _present;

        public Growing(KvLayout layout, KvMemory memory) : base(layout, memory)
        {
            _past = new OrtValue?[layout.Layers * 2];
            _present = new OrtValue?[layout.Layers * 2];
            for (int i = 0; i < _past.Length; i++) _past[i] = Allocate(0);
        }

        public override int Capacity => Length;

        public override void Bind(OrtIoBinding binding, int newTokens)
        {
            DisposeAll(_present);
            for (int layer = 0; layer < Layout.Layers; layer++)
                for (int v = 0; v < 2; v++)
                {
                    int slot = Slot(layer, v == 1);
                    _present[slot] = Allocate(Length + newTokens);
                    binding.BindInput(v == 1 ? Layout.PastValueNames[layer] : Layout.PastKeyNames[layer], _past[slot]!);
                    binding.BindOutput(v == 1 ? Layout.PresentValueNames[layer] : Layout.PresentKeyNames[layer], _present[slot]!);
                }
        }

        public override void Commit(int newTokens)
        {
            for (int i = 0; i < _past.Length; i++)
            {
                Release(_past[i]);
                _past[i] = _present[i];
                _present[i] = null;
            }
            Length += newTokens;
        }

        public override void Abort() => DisposeAll(_present);

        public override void Truncate(int length)
        {
            if (length == Length) return;
            for (int i = 0; i < _past.Length; i++)
            {
                var shorter = Allocate(length);
                KvMemory.CopyRows(Layout, _past[i]!, Length, shorter, length, length);
                Release(_past[i]);
                _past[i] = shorter;
            }
            Length = length;
        }

        public override void Extend(int rows)
        {
            for (int i = 0; i < _past.Length; i++)
            {
                var longer = Allocate(Length + rows);
                KvMemory.CopyRows(Layout, _past[i]!, Length, longer, Length + rows, Length);
                Release(_past[i]);
                _past[i] = longer;
            }
            Length += rows;
        }

        public override void PrepareRestore(int length)
        {
            DisposeAll(_present);
            ReleaseAll(_past);
            for (int i = 0; i < _past.Length; i++) _past[i] = Allocate(length);
            Length = length;
        }

        public override Span<byte> TensorBytes(int layer, bool value) => HostBytes(_past[Slot(layer, value)]!);

        protected override OrtValue?[] Current => _past;

        public override void Dispose()
        {
            ReleaseAll(_past);
            DisposeAll(_present);
        }
    }

    private sealed class Shared : PastKeyValues
    {
        private readonly OrtValue?[] _buffers;

        public Shared(KvLayout layout, OrtValue[] tensors, int capacity) : base(layout, KvMemory.Host)
        {
            if (tensors.Length != layout.Layers * 2) throw new ArgumentException($"{tensors.Length} tensors for {layout.Layers} layers' keys and values.", nameof(tensors));
            _buffers = tensors;
            Capacity = capacity;
        }

        public Shared(KvLayout layout, KvMemory memory) : base(layout, memory)
        {
            Capacity = layout.MaxLength;
            _buffers = new OrtValue?[layout.Layers * 2];
            try
            {
                for (int i = 0; i < _buffers.Length; i++) _buffers[i] = Allocate(layout.MaxLength);
            }
            catch
            {
                DisposeAll(_buffers);
                throw;
            }
        }

        public override int Capacity { get; }

        public override void Bind(OrtIoBinding binding, int newTokens) => BindAsPastAndPresent(binding, Layout, _buffers);

        public override void Commit(int newTokens) => Length += newTokens;

        public override void Abort() { }

        public override void Truncate(int length) => Length = length;

        public override void PrepareRestore(int length)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Capacity);
            Length = length;
        }

        public override void Extend(int rows)
        {
            ArgumentOutOfRangeException.ThrowIfGreaterThan(Length + rows, Capacity);
            Length += rows;
        }

        public override Span<byte> TensorBytes(int layer, bool value) => HostBytes(_buffers[Slot(layer, value)]!);

        protected override OrtValue?[] Current => _buffers;

        public override void Dispose() => ReleaseAll(_buffers);
    }
}
