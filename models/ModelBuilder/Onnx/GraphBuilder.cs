using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace OrtKvTier.ModelBuilder.Onnx;

/// <summary>A dimension of a graph input or output: a fixed size or a symbolic name.</summary>
public readonly record struct Dim(long? Value, string? Param)
{
    /// <summary>A fixed size.</summary>
    public static implicit operator Dim(long value) => new(value, null);

    /// <summary>A symbolic size.</summary>
    public static implicit operator Dim(string param) => new(null, param);
}

/// <summary>
/// Accumulates nodes, initializers and graph inputs/outputs, then serializes an ONNX ModelProto.
/// Node outputs get unique names from <see cref="Node"/>, so callers chain operations by name.
/// </summary>
public sealed class GraphBuilder
{
    /// <summary>
    /// When set, float initializers are written to <see cref="ExternalData"/> (64-byte aligned) instead of into
    /// the model, which names this file as their location.
    /// </summary>
    public string? ExternalDataFile { get; init; }

    /// <summary>Where external-data bytes go (needed with <see cref="ExternalDataFile"/>).</summary>
    public Stream? ExternalData { get; init; }

    private readonly List<ProtoWriter> _nodes = [];
    private readonly List<ProtoWriter> _initializers = [];
    private readonly List<ProtoWriter> _inputs = [];
    private readonly List<ProtoWriter> _outputs = [];
    private int _nextId;

    /// <summary>Adds a graph input.</summary>
    public string Input(string name, OnnxType type, params Dim[] shape)
    {
        _inputs.Add(ValueInfo(name, type, shape));
        return name;
    }

    /// <summary>Declares an existing value as a graph output.</summary>
    public void Output(string name, OnnxType type, params Dim[] shape) => _outputs.Add(ValueInfo(name, type, shape));

    /// <summary>Adds a float initializer stored as <paramref name="type"/> (fp32 or fp16).</summary>
    public string Weight(string name, OnnxType type, float[] values, params long[] dims)
    {
        byte[] raw;
        if (type == OnnxType.Float)
        {
            raw = MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        }
        else if (type == OnnxType.Float16)
        {
            raw = new byte[values.Length * 2];
            for (int i = 0; i < values.Length; i++)
                BinaryPrimitives.WriteHalfLittleEndian(raw.AsSpan(i * 2), (Half)values[i]);
        }
        else
        {
            throw new ArgumentException($"Weights are fp32 or fp16; got {type}.", nameof(type));
        }
        return Initializer(name, type, raw, dims);
    }

    /// <summary>Adds an int64 initializer (shapes, axes, indices).</summary>
    public string Int64s(string name, long[] values, params long[] dims) =>
        Initializer(name, OnnxType.Int64, MemoryMarshal.AsBytes(values.AsSpan()).ToArray(), dims);

    /// <summary>Adds a node and returns the names of its outputs.</summary>
    public string[] Node(string opType, string[] inputs, int outputCount = 1, string domain = "",
        IReadOnlyDictionary<string, object>? attributes = null, string[]? outputNames = null)
    {
        var id = _nextId++;
        var outputs = outputNames ?? Enumerable.Range(0, outputCount).Select(i => $"{opType}_{id}_out{i}").ToArray();
        var node = new ProtoWriter();
        foreach (var input in inputs) node.String(OnnxProto.NodeInput, input);
        foreach (var output in outputs) node.String(OnnxProto.NodeOutput, output);
        node.String(OnnxProto.NodeName, $"{opType}_{id}").String(OnnxProto.NodeOpType, opType);
        if (domain.Length > 0) node.String(OnnxProto.NodeDomain, domain);
        foreach (var (name, value) in attributes ?? new Dictionary<string, object>())
            node.Message(OnnxProto.NodeAttribute, Attribute(name, value));
        _nodes.Add(node);
        return outputs;
    }

    /// <summary>Adds a single-output node and returns its output name.</summary>
    public string Op(string opType, params string[] inputs) => Node(opType, inputs)[0];

    /// <summary>Serializes the model with the default opset 17 and com.microsoft opset 1.</summary>
    public byte[] ToModel(string graphName)
    {
        var graph = new ProtoWriter();
        foreach (var node in _nodes) graph.Message(OnnxProto.GraphNode, node);
        graph.String(OnnxProto.GraphName, graphName);
        foreach (var init in _initializers) graph.Message(OnnxProto.GraphInitializer, init);
        foreach (var input in _inputs) graph.Message(OnnxProto.GraphInput, input);
        foreach (var output in _outputs) graph.Message(OnnxProto.GraphOutput, output);
        return new ProtoWriter()
            .Int(OnnxProto.ModelIrVersion, OnnxProto.IrVersion)
            .String(OnnxProto.ModelProducerName, "OrtKvTier.ModelBuilder")
            .Message(OnnxProto.ModelGraph, graph)
            .Message(OnnxProto.ModelOpsetImport, o => o.String(OnnxProto.OpsetDomain, "").Int(OnnxProto.OpsetVersion, 17))
            .Message(OnnxProto.ModelOpsetImport, o => o.String(OnnxProto.OpsetDomain, "com.microsoft").Int(OnnxProto.OpsetVersion, 1))
            .ToArray();
    }

    private string Initializer(string name, OnnxType type, byte[] raw, long[] dims)
    {
        var tensor = new ProtoWriter();
        foreach (var d in dims) tensor.Int(OnnxProto.TensorDims, d);
        tensor.Int(OnnxProto.TensorDataType, (int)type).String(OnnxProto.TensorName, name);
        if (ExternalDataFile is { } file && ExternalData is { } data && type is OnnxType.Float or OnnxType.Float16)
        {
            long offset = (data.Position + 63) / 64 * 64;
            data.Write(new byte[offset - data.Position]);
            data.Write(raw);
            tensor.Message(OnnxProto.TensorExternalData, e => e.String(OnnxProto.EntryKey, "location").String(OnnxProto.EntryValue, file))
                .Message(OnnxProto.TensorExternalData, e => e.String(OnnxProto.EntryKey, "offset").String(OnnxProto.EntryValue, offset.ToString(System.Globalization.CultureInfo.InvariantCulture)))
                .Message(OnnxProto.TensorExternalData, e => e.String(OnnxProto.EntryKey, "length").String(OnnxProto.EntryValue, raw.Length.ToString(System.Globalization.CultureInfo.InvariantCulture)))
                .Int(OnnxProto.TensorDataLocation, OnnxProto.DataLocationExternal);
        }
        else tensor.Bytes(OnnxProto.TensorRawData, raw);
        _initializers.Add(tensor);
        return name;
    }

    private static ProtoWriter ValueInfo(string name, OnnxType type, Dim[] shape) =>
        new ProtoWriter().String(OnnxProto.ValueInfoName, name).Message(OnnxProto.ValueInfoType, t =>
            t.Message(OnnxProto.TypeTensor, tt =>
            {
                tt.Int(OnnxProto.TypeTensorElemType, (int)type);
                tt.Message(OnnxProto.TypeTensorShape, s =>
                {
                    foreach (var dim in shape)
                        s.Message(OnnxProto.ShapeDim, d =>
                        {
                            if (dim.Value is long v) d.Int(OnnxProto.DimValue, v);
                            else d.String(OnnxProto.DimParam, dim.Param!);
                        });
                });
            }));

    private static ProtoWriter Attribute(string name, object value)
    {
        var attr = new ProtoWriter().String(OnnxProto.AttrName, name);
        switch (value)
        {
            case float f:
                attr.Float(OnnxProto.AttrF, f).Int(OnnxProto.AttrType, OnnxProto.AttrTypeFloat);
                break;
            case int or long:
                attr.Int(OnnxProto.AttrI, Convert.ToInt64(value)).Int(OnnxProto.AttrType, OnnxProto.AttrTypeInt);
                break;
            case long[] ints:
                foreach (var i in ints) attr.Int(OnnxProto.AttrInts, i);
                attr.Int(OnnxProto.AttrType, OnnxProto.AttrTypeInts);
                break;
            default:
                throw new ArgumentException($"Unsupported attribute type {value.GetType().Name} for '{name}'.");
        }
        return attr;
    }
}
