using System.IO.MemoryMappedFiles;
using System.Text;

namespace OrtKvTier.Model;

/// <summary>
/// What the loader needs from an ONNX file without loading it: the external-data files its tensors name
/// (initializers, sparse initializers, and tensor attributes of nodes in every subgraph) and the operator
/// types its graph uses. Reads the protobuf wire format straight from a memory mapping, skipping tensor
/// bytes, so a multi-gigabyte model costs a walk over its field headers.
/// </summary>
internal sealed class OnnxModelFile
{
    // onnx.proto field numbers.
    private const int ModelGraph = 7, ModelFunctions = 25;
    private const int GraphNode = 1, GraphInitializer = 5, GraphSparseInitializer = 15;
    private const int NodeInput = 1, NodeOpType = 4, NodeAttribute = 5, NodeDomain = 7;
    private const int AttrName = 1, AttrInt = 3;
    private const int TensorDims = 1, TensorDataType = 2, TensorFloatData = 4, TensorInt32Data = 5, TensorName = 8, TensorRawData = 9;
    private const int DataTypeFloat = 1, DataTypeFloat16 = 10;
    private const int AttrTensor = 5, AttrGraph = 6, AttrTensors = 10, AttrGraphs = 11, AttrSparseTensor = 22, AttrSparseTensors = 23;
    private const int TensorExternalData = 13, TensorDataLocation = 14;
    private const int SparseValues = 1, SparseIndices = 2;
    private const int EntryKey = 1, EntryValue = 2;
    private const int FunctionNode = 7;

    private readonly HashSet<string> _locations = new(StringComparer.Ordinal);
    private readonly HashSet<string> _operators = new(StringComparer.Ordinal);
    private readonly List<RotaryUse> _rotaryUses = [];
    private readonly Dictionary<string, float[]> _tables = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long[]> _tableDims = new(StringComparer.Ordinal);
    /// <summary>The main graph's initializers, as windows into the mapping (valid while <see cref="Read"/> runs).</summary>
    private readonly List<Reader> _initializers = [];

    /// <summary>A node that rotates keys by position: its op, the names of its cos and sin caches, and whether it interleaves.</summary>
    internal sealed record RotaryUse(string Op, string Cos, string Sin, bool Interleaved);

    /// <summary>Every node of the main graph that applies rotary embeddings (fused GroupQueryAttention with <c>do_rotary</c>, or RotaryEmbedding).</summary>
    public IReadOnlyList<RotaryUse> RotaryUses => _rotaryUses;

    /// <summary>A float or fp16 initializer of the main graph held inline (not external), as floats with its dims; null when there is none such.</summary>
    public (float[] Values, long[] Dims)? Table(string name) => _tables.TryGetValue(name, out var values) ? (values, _tableDims[name]) : null;

    /// <summary>External-data file names as the model writes them (relative to its folder), sorted.</summary>
    public IReadOnlyList<string> ExternalDataFiles => [.. _locations.Order(StringComparer.Ordinal)];

    /// <summary>Operator types the graph uses, as <c>domain:op</c> (<c>:MatMul</c>, <c>com.microsoft:GroupQueryAttention</c>).</summary>
    public IReadOnlySet<string> Operators => _operators;

    /// <summary>Whether the graph (or a subgraph) uses <paramref name="opType"/> of <paramref name="domain"/>.</summary>
    public bool Uses(string domain, string opType) => _operators.Contains($"{domain}:{opType}");

    /// <summary>Reads <paramref name="path"/>; throws <see cref="InvalidDataException"/> when it is not a well-formed ONNX protobuf.</summary>
    public static unsafe OnnxModelFile Read(string path)
    {
        var model = new OnnxModelFile();
        long length = new FileInfo(path).Length;
        if (length == 0) throw new InvalidDataException($"{path} is empty.");
        using var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
        byte* start = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
        try
        {
            model.ReadModel(new Reader(start + view.PointerOffset, length));
            // The rotary caches' tables, while the mapping is there (the windows point into it).
            var wanted = model._rotaryUses.SelectMany(u => new[] { u.Cos, u.Sin }).ToHashSet(StringComparer.Ordinal);
            foreach (var tensor in model._initializers) model.KeepTable(tensor, wanted, Path.GetDirectoryName(Path.GetFullPath(path))!);
            model._initializers.Clear();
        }
        finally
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
        }
        return model;
    }

    private void ReadModel(Reader model)
    {
        while (model.Next(out int field, out var value))
            if (field == ModelGraph) ReadGraph(value, main: true);
            else if (field == ModelFunctions)
                while (value.Next(out int f, out var node)) if (f == FunctionNode) ReadNode(node);
    }

    private void ReadGraph(Reader graph, bool main = false)
    {
        while (graph.Next(out int field, out var value))
            switch (field)
            {
                case GraphNode: ReadNode(value, main); break;
                case GraphInitializer:
                    ReadTensor(value);
                    if (main) _initializers.Add(value);
                    break;
                case GraphSparseInitializer: ReadSparseTensor(value); break;
            }
    }

    private void ReadNode(Reader node, bool main = false)
    {
        string opType = "", domain = "";
        var inputs = new List<string>();
        var ints = new Dictionary<string, long>(StringComparer.Ordinal);
        while (node.Next(out int field, out var value))
            switch (field)
            {
                case NodeInput: inputs.Add(value.Text()); break;
                case NodeOpType: opType = value.Text(); break;
                case NodeDomain: domain = value.Text(); break;
                case NodeAttribute:
                    ReadAttribute(value);
                    if (IntAttribute(value) is var (name, number)) ints[name] = number;
                    break;
            }
        if (domain == "ai.onnx") domain = "";
        _operators.Add($"{domain}:{opType}");
        if (!main) return;
        string Input(int i) => i < inputs.Count ? inputs[i] : "";
        if (domain == "com.microsoft" && opType == "GroupQueryAttention" && ints.GetValueOrDefault("do_rotary") != 0)
            _rotaryUses.Add(new RotaryUse(opType, Input(7), Input(8), ints.GetValueOrDefault("rotary_interleaved") != 0));
        else if (domain == "com.microsoft" && opType == "RotaryEmbedding")
            _rotaryUses.Add(new RotaryUse(opType, Input(2), Input(3), ints.GetValueOrDefault("interleaved") != 0));
        else if (domain == "" && opType == "RotaryEmbedding")
            _rotaryUses.Add(new RotaryUse(opType, Input(1), Input(2), ints.GetValueOrDefault("interleaved") != 0));
    }

    /// <summary>An attribute's name and integer value, when it has one.</summary>
    private static unsafe (string Name, long Value)? IntAttribute(Reader read)
    {
        var attribute = new Reader(read.Pointer, read.Length); // from its start: ReadAttribute walked it already
        string? name = null;
        long? number = null;
        while (attribute.Next(out int field, out var value))
            if (field == AttrName) name = value.Text();
            else if (field == AttrInt) number = (long)value.Varint;
        return name is not null && number is { } n ? (name, n) : null;
    }

    /// <summary>Keeps a wanted float or fp16 initializer stored inline (rotary caches are small); others are skipped.</summary>
    private unsafe void KeepTable(Reader initializer, HashSet<string> wanted, string folder)
    {
        var tensor = new Reader(initializer.Pointer, initializer.Length); // from its start: the walk read it once already
        string? name = null;
        long type = 0;
        var dims = new List<long>();
        Reader? raw = null, floats = null, int32s = null;
        bool external = false;
        string? location = null;
        long offset = 0, length = -1;
        while (tensor.Next(out int field, out var value))
            switch (field)
            {
                case TensorDataLocation: external = value.Varint == 1; break;
                case TensorExternalData:
                    var (key, text) = Entry(value);
                    if (key == "location") location = text;
                    else if (key == "offset" && long.TryParse(text, out var o)) offset = o;
                    else if (key == "length" && long.TryParse(text, out var l)) length = l;
                    break;
                case TensorDims:
                    if (value.IsVarint) dims.Add((long)value.Varint);
                    else dims.AddRange(value.PackedVarints().Select(v => (long)v));
                    break;
                case TensorDataType: type = (long)value.Varint; break;
                case TensorName: name = value.Text(); break;
                case TensorRawData: raw = value; break;
                case TensorFloatData: floats = value; break;
                case TensorInt32Data: int32s = value; break;
            }
        if (name is null || !wanted.Contains(name) || type is not (DataTypeFloat or DataTypeFloat16) || dims.Count != 2) return;
        long count = dims[0] * dims[1];
        if (count <= 0 || count > 1 << 26) return;
        var values = new float[count];
        long bytes = count * (type == DataTypeFloat ? 4 : 2);
        if (external)
        {
            if (location is null || (length >= 0 && length != bytes) || ReadExternal(folder, location, offset, bytes) is not { } stored) return;
            if (type == DataTypeFloat) System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(stored).CopyTo(values);
            else System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(stored), values);
        }
        else if (raw is { } r && r.Length == bytes)
        {
            if (type == DataTypeFloat) new ReadOnlySpan<float>(r.Pointer, (int)count).CopyTo(values);
            else System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(r.Pointer, (int)count), values);
        }
        else if (type == DataTypeFloat && floats is { } f && f.Length == count * 4) new ReadOnlySpan<float>(f.Pointer, (int)count).CopyTo(values);
        else if (type == DataTypeFloat16 && int32s is { } ints)
        {
            var bits = ints.PackedVarints().ToArray();
            if (bits.Length != count) return;
            for (int i = 0; i < values.Length; i++) values[i] = (float)BitConverter.UInt16BitsToHalf((ushort)bits[i]);
        }
        else return;
        _tables[name] = values;
        _tableDims[name] = [.. dims];
    }

    /// <summary>Bytes of an external-data file (a name inside the model's folder), or null when they are not all there or it is outside.</summary>
    private static byte[]? ReadExternal(string folder, string location, long offset, long bytes)
    {
        var path = Path.GetFullPath(Path.Combine(folder, location));
        if (!path.StartsWith(Path.TrimEndingDirectorySeparator(folder) + Path.DirectorySeparatorChar, StringComparison.Ordinal) || offset < 0) return null;
        try
        {
            using var file = File.OpenHandle(path);
            var buffer = new byte[bytes];
            return RandomAccess.Read(file, buffer, offset) == bytes ? buffer : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private void ReadAttribute(Reader attribute)
    {
        while (attribute.Next(out int field, out var value))
            switch (field)
            {
                case AttrTensor or AttrTensors: ReadTensor(value); break;
                case AttrGraph or AttrGraphs: ReadGraph(value); break;
                case AttrSparseTensor or AttrSparseTensors: ReadSparseTensor(value); break;
            }
    }

    private void ReadSparseTensor(Reader sparse)
    {
        while (sparse.Next(out int field, out var value))
            if (field is SparseValues or SparseIndices) ReadTensor(value);
    }

    private void ReadTensor(Reader tensor)
    {
        string? location = null;
        bool external = false;
        while (tensor.Next(out int field, out var value))
            if (field == TensorDataLocation) external = value.Varint == 1;
            else if (field == TensorExternalData && Entry(value) is ("location", var text)) location = text;
        if (external && location is not null) _locations.Add(location);
    }

    /// <summary>One entry of a tensor's external-data list (a StringStringEntryProto): its key and value.</summary>
    private static (string? Key, string? Value) Entry(Reader entry)
    {
        string? key = null, text = null;
        while (entry.Next(out int field, out var value))
            if (field == EntryKey) key = value.Text();
            else if (field == EntryValue) text = value.Text();
        return (key, text);
    }

    /// <summary>A window of protobuf bytes read one field at a time; a nested message is a window too.</summary>
    private sealed unsafe class Reader(byte* start, long length)
    {
        private long _position;

        /// <summary>A varint field's value (when the last field read was one).</summary>
        public ulong Varint { get; private set; }

        /// <summary>Whether this is a varint field (no bytes of its own).</summary>
        public bool IsVarint => start is null;

        /// <summary>The field's bytes (a length-delimited field).</summary>
        public byte* Pointer => start;

        /// <summary>Bytes of the field.</summary>
        public long Length => length;

        /// <summary>A packed repeated varint field's values.</summary>
        public List<ulong> PackedVarints()
        {
            var values = new List<ulong>();
            var copy = new Reader(start, length);
            while (copy._position < length) values.Add(copy.ReadVarint());
            return values;
        }

        /// <summary>The next field: its number and, for a length-delimited one, its bytes as a window. False at the end.</summary>
        public bool Next(out int field, out Reader value)
        {
            value = Empty;
            while (_position < length)
            {
                ulong tag = ReadVarint();
                field = (int)(tag >> 3);
                switch ((int)(tag & 7))
                {
                    case 0:
                        value = new Reader(null, 0) { Varint = ReadVarint() };
                        return true;
                    case 1: Skip(8); break;
                    case 5: Skip(4); break;
                    case 2:
                        ulong size = ReadVarint();
                        if (size > (ulong)(length - _position)) throw new InvalidDataException("A length-delimited field runs past the end of its message.");
                        value = new Reader(start + _position, (long)size);
                        _position += (long)size;
                        return true;
                    default: throw new InvalidDataException($"Unsupported protobuf wire type {tag & 7} at byte {_position}.");
                }
            }
            field = 0;
            return false;
        }

        public string Text() => Encoding.UTF8.GetString(start, checked((int)length));

        private static readonly Reader Empty = new(null, 0);

        private ulong ReadVarint()
        {
            ulong result = 0;
            for (int shift = 0; shift < 64; shift += 7)
            {
                if (_position >= length) throw new InvalidDataException("A varint runs past the end of its message.");
                byte b = start[_position++];
                result |= (ulong)(b & 0x7f) << shift;
                if (b < 0x80) return result;
            }
            throw new InvalidDataException("A varint is longer than 10 bytes.");
        }

        private void Skip(long bytes)
        {
            if (bytes > length - _position) throw new InvalidDataException("A fixed-size field runs past the end of its message.");
            _position += bytes;
        }
    }
}
