using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtKvTier.ModelBuilder;

/// <summary>Writes the <c>genai_config.json</c> GenAI 0.18 loads; only keys its strict parser knows.</summary>
internal static class GenAiConfigFile
{
    public static void Write(string folder, ModelShape shape)
    {
        int endOfText = TokenizerFiles.SpecialId(shape.Vocab, SpecialTokens.EndOfText);
        int end = TokenizerFiles.SpecialId(shape.Vocab, SpecialTokens.End);
        var config = new JsonObject
        {
            ["model"] = new JsonObject
            {
                ["bos_token_id"] = endOfText,
                ["context_length"] = shape.MaxLength,
                ["decoder"] = new JsonObject
                {
                    ["session_options"] = new JsonObject { ["log_id"] = "onnxruntime-genai", ["provider_options"] = new JsonArray() },
                    ["filename"] = "model.onnx",
                    ["head_size"] = shape.HeadSize,
                    ["hidden_size"] = shape.Hidden,
                    ["inputs"] = new JsonObject
                    {
                        ["input_ids"] = "input_ids",
                        ["attention_mask"] = "attention_mask",
                        ["past_key_names"] = "past_key_values.%d.key",
                        ["past_value_names"] = "past_key_values.%d.value",
                    },
                    ["outputs"] = new JsonObject
                    {
                        ["logits"] = "logits",
                        ["present_key_names"] = "present.%d.key",
                        ["present_value_names"] = "present.%d.value",
                    },
                    ["num_attention_heads"] = shape.Heads,
                    ["num_hidden_layers"] = shape.Layers,
                    ["num_key_value_heads"] = shape.KvHeads,
                },
                ["eos_token_id"] = new JsonArray(endOfText, end),
                ["pad_token_id"] = endOfText,
                ["type"] = "llama",
                ["vocab_size"] = shape.Vocab,
            },
            ["search"] = new JsonObject
            {
                ["diversity_penalty"] = 0.0,
                ["do_sample"] = false,
                ["early_stopping"] = true,
                ["length_penalty"] = 1.0,
                ["max_length"] = shape.MaxLength,
                ["min_length"] = 0,
                ["no_repeat_ngram_size"] = 0,
                ["num_beams"] = 1,
                ["num_return_sequences"] = 1,
                ["past_present_share_buffer"] = shape.SharedBuffer,
                ["repetition_penalty"] = 1.0,
                ["temperature"] = 1.0,
                ["top_k"] = 50,
                ["top_p"] = 1.0,
            },
        };
        if (shape.Rotary == RotaryPlacement.PositionIds) config["model"]!["decoder"]!["inputs"]!["position_ids"] = "position_ids";
        File.WriteAllText(Path.Combine(folder, "genai_config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
