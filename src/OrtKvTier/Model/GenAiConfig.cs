using System.Text.Json;
using System.Text.Json.Serialization;

namespace OrtKvTier.Model;

/// <summary>The parts of a GenAI <c>genai_config.json</c> this library reads. Unknown keys are ignored.</summary>
internal sealed class GenAiConfig
{
    /// <summary>The <c>model</c> section.</summary>
    [JsonPropertyName("model")] public ModelSection? Model { get; init; }
    /// <summary>The <c>search</c> section.</summary>
    [JsonPropertyName("search")] public SearchSection? Search { get; init; }

    /// <summary>The <c>model</c> section.</summary>
    public sealed class ModelSection
    {
        /// <summary>Model type (llama, phi3, qwen2, ...).</summary>
        [JsonPropertyName("type")] public string? Type { get; init; }
        /// <summary>Vocabulary size.</summary>
        [JsonPropertyName("vocab_size")] public int? VocabSize { get; init; }
        /// <summary>Context length.</summary>
        [JsonPropertyName("context_length")] public int? ContextLength { get; init; }
        /// <summary>Beginning-of-sequence id.</summary>
        [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
        /// <summary>End-of-sequence ids (a number or an array in the file).</summary>
        [JsonPropertyName("eos_token_id"), JsonConverter(typeof(IntOrArrayConverter))] public int[]? EosTokenId { get; init; }
        /// <summary>Padding id.</summary>
        [JsonPropertyName("pad_token_id")] public int? PadTokenId { get; init; }
        /// <summary>The <c>decoder</c> section.</summary>
        [JsonPropertyName("decoder")] public DecoderSection? Decoder { get; init; }
        /// <summary>Keys not read here (other models of a pipeline: <c>vision</c>, <c>speech</c>, <c>embedding</c>, <c>encoder</c>, …).</summary>
        [JsonExtensionData] public Dictionary<string, JsonElement>? Other { get; set; }
    }

    /// <summary>The <c>model.decoder</c> section.</summary>
    public sealed class DecoderSection
    {
        /// <summary>ONNX file name, relative to the folder.</summary>
        [JsonPropertyName("filename")] public string? Filename { get; init; }
        /// <summary>Size of one attention head.</summary>
        [JsonPropertyName("head_size")] public int? HeadSize { get; init; }
        /// <summary>Hidden size.</summary>
        [JsonPropertyName("hidden_size")] public int? HiddenSize { get; init; }
        /// <summary>Query heads.</summary>
        [JsonPropertyName("num_attention_heads")] public int? NumAttentionHeads { get; init; }
        /// <summary>Layers.</summary>
        [JsonPropertyName("num_hidden_layers")] public int? NumHiddenLayers { get; init; }
        /// <summary>Key/value heads.</summary>
        [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeads { get; init; }
        /// <summary>Input names.</summary>
        [JsonPropertyName("inputs")] public DecoderInputs? Inputs { get; init; }
        /// <summary>Output names.</summary>
        [JsonPropertyName("outputs")] public DecoderOutputs? Outputs { get; init; }
        /// <summary>Keys not read here (<c>pipeline</c>, <c>session_options</c>, …).</summary>
        [JsonExtensionData] public Dictionary<string, JsonElement>? Other { get; set; }
    }

    /// <summary>The <c>model.decoder.inputs</c> section.</summary>
    public sealed class DecoderInputs
    {
        /// <summary>Token ids input.</summary>
        [JsonPropertyName("input_ids")] public string? InputIds { get; init; }
        /// <summary>Attention mask input.</summary>
        [JsonPropertyName("attention_mask")] public string? AttentionMask { get; init; }
        /// <summary>Position ids input, when the graph has one.</summary>
        [JsonPropertyName("position_ids")] public string? PositionIds { get; init; }
        /// <summary>Past key name pattern with <c>%d</c> for the layer.</summary>
        [JsonPropertyName("past_key_names")] public string? PastKeyNames { get; init; }
        /// <summary>Past value name pattern with <c>%d</c> for the layer.</summary>
        [JsonPropertyName("past_value_names")] public string? PastValueNames { get; init; }
        /// <summary>Keys not read here (<c>past_names</c> of GPT-2's combined tensors, <c>inputs_embeds</c>, …).</summary>
        [JsonExtensionData] public Dictionary<string, JsonElement>? Other { get; set; }
    }

    /// <summary>The <c>model.decoder.outputs</c> section.</summary>
    public sealed class DecoderOutputs
    {
        /// <summary>Logits output.</summary>
        [JsonPropertyName("logits")] public string? Logits { get; init; }
        /// <summary>Present key name pattern with <c>%d</c> for the layer.</summary>
        [JsonPropertyName("present_key_names")] public string? PresentKeyNames { get; init; }
        /// <summary>Present value name pattern with <c>%d</c> for the layer.</summary>
        [JsonPropertyName("present_value_names")] public string? PresentValueNames { get; init; }
    }

    /// <summary>The <c>search</c> section: defaults for generation.</summary>
    public sealed class SearchSection
    {
        /// <summary>Sample instead of greedy.</summary>
        [JsonPropertyName("do_sample")] public bool? DoSample { get; init; }
        /// <summary>Maximum sequence length, prompt included.</summary>
        [JsonPropertyName("max_length")] public int? MaxLength { get; init; }
        /// <summary>Whether past and present share one max-length buffer.</summary>
        [JsonPropertyName("past_present_share_buffer")] public bool? PastPresentShareBuffer { get; init; }
        /// <summary>Softmax temperature.</summary>
        [JsonPropertyName("temperature")] public double? Temperature { get; init; }
        /// <summary>Top-k cut (0: off).</summary>
        [JsonPropertyName("top_k")] public int? TopK { get; init; }
        /// <summary>Nucleus cut (1: off).</summary>
        [JsonPropertyName("top_p")] public double? TopP { get; init; }
        /// <summary>Beams; only 1 (greedy or sampling) is supported.</summary>
        [JsonPropertyName("num_beams")] public int? NumBeams { get; init; }
        /// <summary>Sequences returned per prompt; only 1 is supported.</summary>
        [JsonPropertyName("num_return_sequences")] public int? NumReturnSequences { get; init; }
        /// <summary>End-of-sequence tokens are suppressed until the sequence (prompt included) is this long.</summary>
        [JsonPropertyName("min_length")] public int? MinLength { get; init; }
        /// <summary>Scores of tokens already in the sequence are divided (positive) or multiplied (negative) by this; 1 is off.</summary>
        [JsonPropertyName("repetition_penalty")] public double? RepetitionPenalty { get; init; }
        /// <summary>Sampling seed; -1 picks one at random.</summary>
        [JsonPropertyName("random_seed")] public long? RandomSeed { get; init; }
    }

    /// <summary>Reads an int or an array of ints.</summary>
    internal sealed class IntOrArrayConverter : JsonConverter<int[]>
    {
        /// <inheritdoc />
        public override int[]? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
        {
            if (reader.TokenType == JsonTokenType.Number) return [reader.GetInt32()];
            if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("expected a number or an array of numbers");
            var ids = new List<int>();
            while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            {
                if (reader.TokenType != JsonTokenType.Number) throw new JsonException("expected an array of numbers");
                ids.Add(reader.GetInt32());
            }
            return ids.ToArray();
        }

        /// <inheritdoc />
        public override void Write(Utf8JsonWriter writer, int[] value, JsonSerializerOptions options)
        {
            writer.WriteStartArray();
            foreach (var id in value) writer.WriteNumberValue(id);
            writer.WriteEndArray();
        }
    }
}

[JsonSourceGenerationOptions(ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true)]
[JsonSerializable(typeof(GenAiConfig))]
internal sealed partial class GenAiConfigJson : JsonSerializerContext;
