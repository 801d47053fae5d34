using System.Text.Json;
using System.Text.Json.Nodes;

namespace OrtKvTier.ModelBuilder;

/// <summary>Writes a Hugging Face byte-level BPE <c>tokenizer.json</c> and its <c>tokenizer_config.json</c>.</summary>
internal static class TokenizerFiles
{
    public static void Write(string folder, ModelShape shape)
    {
        int mergeCount = shape.Vocab - ModelShape.ByteTokens - SpecialTokens.All.Length;
        var merges = BpeTrainer.Train(TrainingText.Text, mergeCount, shape.Seed);

        var vocab = new JsonObject();
        int id = 0;
        foreach (var c in ByteLevel.ByteToChar) vocab[c.ToString()] = id++;
        foreach (var (left, right) in merges) vocab[left + right] = id++;
        var added = new JsonArray();
        foreach (var special in SpecialTokens.All)
        {
            vocab[special] = id;
            added.Add(new JsonObject
            {
                ["id"] = id++, ["content"] = special, ["single_word"] = false, ["lstrip"] = false,
                ["rstrip"] = false, ["normalized"] = false, ["special"] = true,
            });
        }

        var byteLevel = new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = true, ["use_regex"] = true };
        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = byteLevel.DeepClone(),
            ["post_processor"] = null,
            ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "", ["fuse_unk"] = false, ["byte_fallback"] = false,
                ["vocab"] = vocab,
                ["merges"] = new JsonArray(merges.Select(m => (JsonNode)JsonValue.Create($"{m.Left} {m.Right}")).ToArray()),
            },
        };
        var config = new JsonObject
        {
            ["add_bos_token"] = false,
            ["add_eos_token"] = false,
            ["bos_token"] = SpecialTokens.EndOfText,
            ["eos_token"] = SpecialTokens.EndOfText,
            ["unk_token"] = SpecialTokens.EndOfText,
            ["pad_token"] = SpecialTokens.EndOfText,
            ["clean_up_tokenization_spaces"] = false,
            ["model_max_length"] = shape.MaxLength,
            ["tokenizer_class"] = "GPT2Tokenizer",
            ["chat_template"] = SpecialTokens.ChatTemplate,
        };
        var options = new JsonSerializerOptions { WriteIndented = true };
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), tokenizer.ToJsonString(options));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), config.ToJsonString(options));
    }

    /// <summary>Id of a special token in a vocabulary of <paramref name="vocab"/> tokens.</summary>
    public static int SpecialId(int vocab, string special) =>
        vocab - SpecialTokens.All.Length + Array.IndexOf(SpecialTokens.All, special);
}
