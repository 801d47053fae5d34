using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtKvTier.Cache;
using OrtKvTier.Tensors;

namespace OrtKvTier.Model;

/// <summary>
/// A GenAI model folder opened for our own generation loop: its parsed config, the ONNX Runtime
/// session on the CPU, the KV layout discovered from config and graph, and the model fingerprint.
/// </summary>
public sealed class KvModel : IDisposable
{
    /// <summary>The GroupQueryAttention kernel refuses other head sizes.</summary>
    public const int HeadSizeMultiple = 16;

    private KvModel(string folder, GenAiConfig config, InferenceSession session, KvLayout layout, ModelFingerprint fingerprint,
        ModelNames names, int vocabSize, int[] eosTokenIds)
    {
        Folder = folder;
        Config = config;
        Session = session;
        Layout = layout;
        Fingerprint = fingerprint;
        Names = names;
        VocabSize = vocabSize;
        EosTokenIds = eosTokenIds;
    }

    /// <summary>The model folder (full path).</summary>
    public string Folder { get; }
    /// <summary>The parsed genai_config.json.</summary>
    internal GenAiConfig Config { get; }
    /// <summary>The decoder session.</summary>
    public InferenceSession Session { get; }
    /// <summary>How past key/values are laid out.</summary>
    public KvLayout Layout { get; }
    /// <summary>Identity of weights, config and layout.</summary>
    public ModelFingerprint Fingerprint { get; }
    /// <summary>Graph input/output names the loop binds.</summary>
    public ModelNames Names { get; }
    /// <summary>What running this model costs here, measured on every run of its generators (the prefix cache's restore decision reads it).</summary>
    internal RunCosts RunCosts { get; } = new();
    /// <summary>Vocabulary size (last dimension of the logits).</summary>
    public int VocabSize { get; }
    /// <summary>End-of-sequence token ids.</summary>
    public IReadOnlyList<int> EosTokenIds { get; }
    /// <summary>Element type of the logits output.</summary>
    public TensorElementType LogitsType { get; private init; }

    /// <summary>Where the decoder runs (<see cref="ExecutionDevice.Cpu"/> after a fallback).</summary>
    public ExecutionDevice Device { get; private init; }

    /// <summary>The CUDA device the session runs on, or null on the CPU.</summary>
    public OrtEpDevice? EpDevice { get; private init; }

    /// <summary>How the model rotates keys by position; null when they cannot be moved (<see cref="DocumentReuseRefusal"/>).</summary>
    internal RotaryPositions? Rotary { get; private init; }

    /// <summary>
    /// Why cached documents cannot be placed at other positions in this model's prompts (document reuse is refused), or
    /// null when they can. Exact prefix caching is unaffected either way.
    /// </summary>
    public string? DocumentReuseRefusal { get; private init; }

    /// <summary>Why the model runs on the CPU although CUDA was asked for; null otherwise.</summary>
    public string? DeviceNote { get; private init; }

    /// <summary>Appends the CUDA provider when asked for and available; otherwise says why the CPU runs.</summary>
    private static (ExecutionDevice, OrtEpDevice?, string?) ChooseDevice(KvModelOptions options, SessionOptions sessionOptions)
    {
        if (options.Device == ExecutionDevice.Cpu) return (ExecutionDevice.Cpu, null, null);
        var devices = CudaExecutionProvider.Devices(options.CudaProviderPath, out var reason);
        if (devices.Count > options.CudaDeviceIndex)
        {
            var device = devices[options.CudaDeviceIndex];
            sessionOptions.AppendExecutionProvider(OrtEnv.Instance(), [device], new Dictionary<string, string>());
            return (ExecutionDevice.Cuda, device, null);
        }
        reason ??= $"CUDA device {options.CudaDeviceIndex} was asked for; ONNX Runtime offers {devices.Count}";
        if (!options.FallBackToCpu)
            throw new InvalidOperationException($"The model cannot run on CUDA: {reason}. Set FallBackToCpu to run on the CPU instead.");
        return (ExecutionDevice.Cpu, null, $"running on the CPU: {reason}");
    }

    /// <summary>Opens a GenAI model folder. Throws <see cref="ModelFolderException"/> when it is not usable.</summary>
    public static KvModel Load(string folder, KvModelOptions? options = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(folder);
        options ??= new KvModelOptions();
        options.Validate();
        folder = Path.TrimEndingDirectorySeparator(Path.GetFullPath(folder));
        if (!Directory.Exists(folder))
            throw new ModelFolderException(folder, "", "a GenAI model folder", "no such directory", "Pass the folder that holds genai_config.json and model.onnx.");

        var configPath = Path.Combine(folder, "genai_config.json");
        var config = ReadConfig(configPath);
        var decoder = Require(configPath, "model.decoder", config.Model?.Decoder, "an object describing the decoder", "Is this a GenAI decoder folder?");
        Require(configPath, "model.type", config.Model!.Type, "a model type such as \"llama\"", "Is this a GenAI decoder folder?");
        int layers = Positive(configPath, "model.decoder.num_hidden_layers", decoder.NumHiddenLayers);
        int kvHeads = Positive(configPath, "model.decoder.num_key_value_heads", decoder.NumKeyValueHeads ?? decoder.NumAttentionHeads);
        int headSize = Positive(configPath, "model.decoder.head_size", decoder.HeadSize);
        DecoderChecks.Config(configPath, config);

        var decoderFile = Require(configPath, "model.decoder.filename", decoder.Filename, "the decoder's ONNX file name");
        var decoderPath = Path.Combine(folder, decoderFile);
        if (!File.Exists(decoderPath))
            throw new ModelFolderException(decoderPath, "", "the decoder ONNX file named by model.decoder.filename", "no such file");
        var tokenizerPath = Path.Combine(folder, "tokenizer.json");
        if (!File.Exists(tokenizerPath))
            throw new ModelFolderException(tokenizerPath, "", "the tokenizer of the model", "no such file");

        var names = ModelNames.FromConfig(configPath, decoder, layers);
        bool shared = options.SharedBuffer ?? config.Search?.PastPresentShareBuffer ?? false;
        int maxLength = config.Search?.MaxLength ?? config.Model.ContextLength
            ?? throw new ModelFolderException(configPath, "search.max_length", "a positive integer (or model.context_length)", "neither");
        var graph = ReadGraph(decoderPath);
        DecoderChecks.Attention(configPath, graph, headSize, shared);
        var externalData = DecoderChecks.ExternalData(decoderPath, graph);

        OrtRuntime.EnsureLoaded();
        using var sessionOptions = new SessionOptions { GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL };
        if (options.IntraOpThreads > 0) sessionOptions.IntraOpNumThreads = options.IntraOpThreads;
        var (device, epDevice, deviceNote) = ChooseDevice(options, sessionOptions);
        options.ConfigureSession?.Invoke(sessionOptions);
        InferenceSession session;
        try
        {
            session = new InferenceSession(decoderPath, sessionOptions);
        }
        catch (OnnxRuntimeException e)
        {
            throw new ModelFolderException(decoderPath, "", "an ONNX model ONNX Runtime can load", e.Message, inner: e);
        }

        try
        {
            var (elementType, positionIds, positionType) = DecoderChecks.Graph(decoderPath, configPath, session, names, kvHeads, headSize);
            names = names with { PositionIds = positionIds, PositionIdsInt32 = positionType == TensorElementType.Int32 };
            var layout = new KvLayout
            {
                Layers = layers, KvHeads = kvHeads, HeadSize = headSize, ElementType = elementType, SharedBuffer = shared,
                MaxLength = maxLength, PastKeyNames = names.PastKeys, PastValueNames = names.PastValues,
                PresentKeyNames = names.PresentKeys, PresentValueNames = names.PresentValues,
            };
            var logitsMeta = session.OutputMetadata[names.Logits];
            int vocab = (int)logitsMeta.Dimensions[^1];
            if (vocab <= 0) vocab = config.Model.VocabSize ?? throw new ModelFolderException(configPath, "model.vocab_size", "the vocabulary size", "nothing, and the logits output has no fixed last dimension");
            var eos = config.Model.EosTokenId ?? [];
            return new KvModel(folder, config, session, layout, ModelFingerprint.Compute(decoderPath, externalData, configPath, layout), names, vocab, eos)
            {
                LogitsType = logitsMeta.ElementDataType, Device = device, EpDevice = epDevice, DeviceNote = deviceNote,
                Rotary = RotaryPositions.From(graph, headSize, out var refusal), DocumentReuseRefusal = refusal,
            };
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose() => Session.Dispose();

    private static GenAiConfig ReadConfig(string configPath)
    {
        if (!File.Exists(configPath))
            throw new ModelFolderException(configPath, "", "a GenAI genai_config.json", "no such file", "Pass a GenAI model folder.");
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllBytes(configPath), GenAiConfigJson.Default.GenAiConfig)
                ?? throw new ModelFolderException(configPath, "", "a JSON object", "null");
        }
        catch (JsonException e)
        {
            throw new ModelFolderException(configPath, e.Path ?? "", "valid GenAI config JSON", e.Message, inner: e);
        }
    }

    private static OnnxModelFile ReadGraph(string decoderPath)
    {
        try
        {
            return OnnxModelFile.Read(decoderPath);
        }
        catch (InvalidDataException e)
        {
            throw new ModelFolderException(decoderPath, "", "an ONNX model ONNX Runtime can load (a protobuf ModelProto)", e.Message, inner: e);
        }
    }

    private static T Require<T>(string file, string field, T? value, string expected, string? fix = null) where T : class =>
        value ?? throw new ModelFolderException(file, field, expected, "nothing (the field is missing)", fix);

    private static int Positive(string file, string field, int? value) =>
        value is > 0 ? value.Value : throw new ModelFolderException(file, field, "a positive integer", value?.ToString() ?? "nothing (the field is missing)");
}
