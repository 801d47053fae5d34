using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;

namespace OrtKvTier.Model;

/// <summary>
/// What <see cref="KvModel.Load"/> checks before the loop serves a folder: every feature the loop cannot serve
/// is refused here, naming it, never found mid-generation. GenAI's own <c>Generator</c> may still run such a
/// folder, without this library's cache.
/// </summary>
internal static class DecoderChecks
{
    private const string RunsInGenAi = "GenAI's Generator runs this folder without the prefix cache; this loop does not serve it.";

    /// <summary>Other models GenAI runs beside a decoder (multi-model pipelines).</summary>
    private static readonly string[] PipelineSections = ["vision", "speech", "embedding", "encoder", "audio", "decoder_pipeline"];

    /// <summary>Refuses what the config alone shows the loop cannot do.</summary>
    public static void Config(string configPath, GenAiConfig config)
    {
        var model = config.Model!;
        var decoder = model.Decoder!;
        foreach (var section in PipelineSections)
            if (model.Other?.ContainsKey(section) == true)
                throw Unsupported(configPath, $"model.{section}", $"a multi-model pipeline (a '{section}' model beside the decoder)");
        if (decoder.Other?.ContainsKey("pipeline") == true)
            throw Unsupported(configPath, "model.decoder.pipeline", "a decoder split into a pipeline of several ONNX models");
        foreach (var combined in new[] { "past_names", "past_key_values" })
            if (decoder.Inputs?.Other?.ContainsKey(combined) == true)
                throw Unsupported(configPath, $"model.decoder.inputs.{combined}", "one combined past tensor per layer (GPT-2 style) instead of a key and a value");
        if (config.Search?.NumBeams is > 1 and var beams)
            throw new ModelFolderException(configPath, "search.num_beams", "1 (greedy search or sampling)", beams.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "Beam search is not implemented by this loop: set num_beams to 1, or run the folder in GenAI's Generator without the cache.");
        if (config.Search?.NumReturnSequences is > 1 and var sequences)
            throw new ModelFolderException(configPath, "search.num_return_sequences", "1", sequences.ToString(System.Globalization.CultureInfo.InvariantCulture),
                "This loop generates one sequence per prompt: set num_return_sequences to 1.");
    }

    /// <summary>
    /// Checks the attention-specific parts: GroupQueryAttention on the CPU needs a head size that is a multiple
    /// of <see cref="KvModel.HeadSizeMultiple"/>, and a shared past/present buffer needs GroupQueryAttention.
    /// </summary>
    public static void Attention(string configPath, OnnxModelFile graph, int headSize, bool sharedBuffer)
    {
        bool gqa = graph.Uses("com.microsoft", "GroupQueryAttention");
        if (gqa && headSize % KvModel.HeadSizeMultiple != 0)
            throw new ModelFolderException(configPath, "model.decoder.head_size", $"a multiple of {KvModel.HeadSizeMultiple} (GroupQueryAttention refuses others)",
                headSize.ToString(System.Globalization.CultureInfo.InvariantCulture), "Rebuild the model with a supported head size.");
        if (sharedBuffer && !gqa)
            throw new ModelFolderException(configPath, "search.past_present_share_buffer", "false for a graph without GroupQueryAttention", "true",
                "Only GroupQueryAttention reads and writes one shared past/present buffer; set it to false (or KvModelOptions.SharedBuffer = false).");
    }

    /// <summary>
    /// Checks the session's inputs and outputs against what the loop binds and returns the KV element type and the
    /// position-ids input (null when the graph has none). Anything else is refused, naming it.
    /// </summary>
    public static (KvElementType Element, string? PositionIds, TensorElementType PositionType) Graph(
        string decoderPath, string configPath, InferenceSession session, ModelNames names, int kvHeads, int headSize)
    {
        var inputs = session.InputMetadata;
        var outputs = session.OutputMetadata;
        string file = Path.GetFileName(decoderPath);
        if (inputs.ContainsKey("inputs_embeds") && !inputs.ContainsKey(names.InputIds))
            throw Unsupported(decoderPath, "inputs_embeds", "a decoder fed with embeddings (inputs_embeds) instead of token ids");
        foreach (var (field, name) in names.RequiredInputs())
            if (!inputs.ContainsKey(name))
                throw new ModelFolderException(configPath, field, $"an input of {file}", $"'{name}', which the graph lacks; its inputs are {string.Join(", ", inputs.Keys)}");
        foreach (var (field, name) in names.RequiredOutputs())
            if (!outputs.ContainsKey(name))
                throw new ModelFolderException(configPath, field, $"an output of {file}", $"'{name}', which the graph lacks; its outputs are {string.Join(", ", outputs.Keys)}");

        var positionIds = names.PositionIds is { } p && inputs.ContainsKey(p) ? p : null;
        var positionType = TensorElementType.Int64;
        if (positionIds is not null)
        {
            positionType = inputs[positionIds].ElementDataType;
            if (positionType is not (TensorElementType.Int64 or TensorElementType.Int32))
                throw new ModelFolderException(decoderPath, positionIds, "int64 or int32 position ids", positionType.ToString());
        }
        var known = names.RequiredInputs().Select(i => i.Name).Append(positionIds).ToHashSet(StringComparer.Ordinal);
        foreach (var name in inputs.Keys.Where(n => !known.Contains(n)))
            throw name.Contains("scale", StringComparison.OrdinalIgnoreCase) || name.Contains("zero_point", StringComparison.OrdinalIgnoreCase)
                ? Unsupported(decoderPath, name, "a quantized KV cache (scale inputs)")
                : Unsupported(decoderPath, name, $"an input the loop does not know ('{name}'; it binds {string.Join(", ", known.Order(StringComparer.Ordinal).Take(4))}, …)");
        var knownOutputs = names.RequiredOutputs().Select(o => o.Name).ToHashSet(StringComparer.Ordinal);
        foreach (var name in outputs.Keys.Where(n => !knownOutputs.Contains(n)))
            throw Unsupported(decoderPath, name, $"an output the loop does not know ('{name}'; it binds logits and the presents)");

        var type = inputs[names.PastKeys[0]].ElementDataType;
        if (type == TensorElementType.BFloat16) throw Unsupported(decoderPath, names.PastKeys[0], "a bf16 KV cache (the CPU loop keeps fp16 or fp32)");
        if (type is TensorElementType.Int8 or TensorElementType.UInt8)
            throw Unsupported(decoderPath, names.PastKeys[0], $"a quantized KV cache ({type})");
        if (type is not (TensorElementType.Float or TensorElementType.Float16))
            throw new ModelFolderException(decoderPath, names.PastKeys[0], "fp32 or fp16 past key/values", type.ToString());
        foreach (var name in names.PastKeys.Concat(names.PastValues))
        {
            var dims = inputs[name].Dimensions;
            if (dims.Length == 5) throw Unsupported(decoderPath, name, "one combined past tensor per layer (GPT-2 style, rank 5)");
            if (dims.Length != 4)
                throw new ModelFolderException(decoderPath, name, "a rank-4 tensor [batch, kv_heads, past, head_size]", $"rank {dims.Length}");
            if (dims[1] > 0 && dims[1] != kvHeads)
                throw new ModelFolderException(decoderPath, name, $"{kvHeads} kv heads (model.decoder.num_key_value_heads in genai_config.json)", $"{dims[1]} in dimension 1");
            if (dims[3] > 0 && dims[3] != headSize)
                throw new ModelFolderException(decoderPath, name, $"head size {headSize} (model.decoder.head_size in genai_config.json)", $"{dims[3]} in dimension 3");
            if (inputs[name].ElementDataType != type)
                throw new ModelFolderException(decoderPath, name, $"{type} like {names.PastKeys[0]}", inputs[name].ElementDataType.ToString());
        }
        return (type == TensorElementType.Float16 ? KvElementType.Float16 : KvElementType.Float32, positionIds, positionType);
    }

    /// <summary>The external-data files the graph references, each checked to exist inside the model folder.</summary>
    public static IReadOnlyList<string> ExternalData(string decoderPath, OnnxModelFile graph)
    {
        var folder = Path.GetDirectoryName(Path.GetFullPath(decoderPath))!;
        foreach (var location in graph.ExternalDataFiles)
        {
            var path = Path.GetFullPath(Path.Combine(folder, location));
            if (!path.StartsWith(folder + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                throw new ModelFolderException(decoderPath, location, "an external-data file inside the model folder", $"'{location}', which points outside it");
            if (!File.Exists(path))
                throw new ModelFolderException(decoderPath, location, $"the external-data file '{location}' the graph's initializers reference", "no such file",
                    "Copy every file of the model folder (weights are often in model.onnx.data or model.onnx_data).");
        }
        return graph.ExternalDataFiles;
    }

    private static ModelFolderException Unsupported(string file, string field, string feature) =>
        new(file, field, "a decoder this library's loop serves", feature, RunsInGenAi);
}
