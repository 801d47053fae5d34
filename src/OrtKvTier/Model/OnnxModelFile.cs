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
    private const int NodeOpType = 4, NodeAttribute = 5, NodeDomain = 7;
    private const int AttrTensor = 5, AttrGraph = 6, AttrTensors = 10, AttrGraphs = 11, AttrSparseTensor = 22, AttrSparseTensors = 23;
    private const int TensorExternalData = 13, TensorDataLocation = 14;
    private const int SparseValues = 1, SparseIndices = 2;
    private const int EntryKey = 1, EntryValue = 2;
    private const int FunctionNode = 7;

    private readonly HashSet<string> _locations = new(StringComparer.Ordinal);
    private readonly HashSet<string> _operators = new(StringComparer.Ordinal);

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
            if (field == ModelGraph) ReadGraph(value);
            else if (field == ModelFunctions)
                while (value.Next(out int f, out var node)) if (f == FunctionNode) ReadNode(node);
    }

    private void ReadGraph(Reader graph)
    {
        while (graph.Next(out int field, out var value))
            switch (field)
            {
                case GraphNode: ReadNode(value); break;
                case GraphInitializer: ReadTensor(value); break;
                case GraphSparseInitializer: ReadSparseTensor(value); break;
            }
    }

    private void ReadNode(Reader node)
    {
        string opType = "", domain = "";
        while (node.Next(out int field, out var value))
            switch (field)
            {
                case NodeOpType: opType = value.Text(); break;
                case NodeDomain: domain = value.Text(); break;
                case NodeAttribute: ReadAttribute(value); break;
            }
        _operators.Add($"{(domain == "ai.onnx" ? "" : domain)}:{opType}");
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
            else if (field == TensorExternalData)
            {
                string? key = null, text = null;
                while (value.Next(out int f, out var entry))
                    if (f == EntryKey) key = entry.Text();
                    else if (f == EntryValue) text = entry.Text();
                if (key == "location") location = text;
            }
        if (external && location is not null) _locations.Add(location);
    }

    /// <summary>A window of protobuf bytes read one field at a time; a nested message is a window too.</summary>
    private sealed unsafe class Reader(byte* start, long length)
    {
        private long _position;

        /// <summary>A varint field's value (when the last field read was one).</summary>
        public ulong Varint { get; private set; }

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
