namespace OrtKvTier.ModelBuilder.Onnx;

/// <summary>ONNX element types (TensorProto.DataType) used by the builder.</summary>
public enum OnnxType
{
    /// <summary>32-bit float.</summary>
    Float = 1,
    /// <summary>32-bit signed integer.</summary>
    Int32 = 6,
    /// <summary>64-bit signed integer.</summary>
    Int64 = 7,
    /// <summary>IEEE half precision.</summary>
    Float16 = 10,
    /// <summary>8-bit signed integer (quantized tensors).</summary>
    Int8 = 3,
    /// <summary>Brain floating point.</summary>
    BFloat16 = 16,
}

/// <summary>Field numbers of onnx.proto (ONNX IR), gathered in one place.</summary>
internal static class OnnxProto
{
    public const int ModelIrVersion = 1, ModelProducerName = 2, ModelGraph = 7, ModelOpsetImport = 8;
    public const int OpsetDomain = 1, OpsetVersion = 2;
    public const int GraphNode = 1, GraphName = 2, GraphInitializer = 5, GraphInput = 11, GraphOutput = 12;
    public const int NodeInput = 1, NodeOutput = 2, NodeName = 3, NodeOpType = 4, NodeAttribute = 5, NodeDomain = 7;
    public const int AttrName = 1, AttrF = 2, AttrI = 3, AttrInts = 8, AttrType = 20;
    public const int AttrTypeFloat = 1, AttrTypeInt = 2, AttrTypeInts = 7;
    public const int TensorDims = 1, TensorDataType = 2, TensorName = 8, TensorRawData = 9, TensorExternalData = 13, TensorDataLocation = 14;
    public const int EntryKey = 1, EntryValue = 2;
    public const int DataLocationExternal = 1;
    public const int ValueInfoName = 1, ValueInfoType = 2;
    public const int TypeTensor = 1, TypeTensorElemType = 1, TypeTensorShape = 2;
    public const int ShapeDim = 1, DimValue = 1, DimParam = 2;

    /// <summary>IR version 8 goes with opset 17, the opset the decoder graph uses.</summary>
    public const int IrVersion = 8;
}
