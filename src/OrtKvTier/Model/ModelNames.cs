namespace OrtKvTier.Model;

/// <summary>The graph names the generation loop binds, expanded from genai_config.json.</summary>
public sealed record ModelNames
{
    /// <summary>Token ids input.</summary>
    public required string InputIds { get; init; }
    /// <summary>Attention mask input.</summary>
    public required string AttentionMask { get; init; }
    /// <summary>Position ids input, when the graph has one (rotary applied outside attention); the loop binds the token positions.</summary>
    public string? PositionIds { get; init; }
    /// <summary>Whether <see cref="PositionIds"/> is int32 (else int64).</summary>
    internal bool PositionIdsInt32 { get; init; }
    /// <summary>Logits output.</summary>
    public required string Logits { get; init; }
    /// <summary>Past key inputs per layer.</summary>
    public required IReadOnlyList<string> PastKeys { get; init; }
    /// <summary>Past value inputs per layer.</summary>
    public required IReadOnlyList<string> PastValues { get; init; }
    /// <summary>Present key outputs per layer.</summary>
    public required IReadOnlyList<string> PresentKeys { get; init; }
    /// <summary>Present value outputs per layer.</summary>
    public required IReadOnlyList<string> PresentValues { get; init; }

    internal static ModelNames FromConfig(string configPath, GenAiConfig.DecoderSection decoder, int layers)
    {
        var inputs = decoder.Inputs;
        var outputs = decoder.Outputs;
        return new ModelNames
        {
            InputIds = inputs?.InputIds ?? "input_ids",
            AttentionMask = inputs?.AttentionMask ?? "attention_mask",
            PositionIds = inputs?.PositionIds ?? "position_ids",
            Logits = outputs?.Logits ?? "logits",
            PastKeys = Expand(configPath, "model.decoder.inputs.past_key_names", inputs?.PastKeyNames ?? "past_key_values.%d.key", layers),
            PastValues = Expand(configPath, "model.decoder.inputs.past_value_names", inputs?.PastValueNames ?? "past_key_values.%d.value", layers),
            PresentKeys = Expand(configPath, "model.decoder.outputs.present_key_names", outputs?.PresentKeyNames ?? "present.%d.key", layers),
            PresentValues = Expand(configPath, "model.decoder.outputs.present_value_names", outputs?.PresentValueNames ?? "present.%d.value", layers),
        };
    }

    internal IEnumerable<(string Field, string Name)> RequiredInputs()
    {
        yield return ("model.decoder.inputs.input_ids", InputIds);
        yield return ("model.decoder.inputs.attention_mask", AttentionMask);
        foreach (var n in PastKeys) yield return ("model.decoder.inputs.past_key_names", n);
        foreach (var n in PastValues) yield return ("model.decoder.inputs.past_value_names", n);
    }

    internal IEnumerable<(string Field, string Name)> RequiredOutputs()
    {
        yield return ("model.decoder.outputs.logits", Logits);
        foreach (var n in PresentKeys) yield return ("model.decoder.outputs.present_key_names", n);
        foreach (var n in PresentValues) yield return ("model.decoder.outputs.present_value_names", n);
    }

    private static string[] Expand(string configPath, string field, string pattern, int layers)
    {
        if (!pattern.Contains("%d", StringComparison.Ordinal))
            throw new ModelFolderException(configPath, field, "a name pattern with %d for the layer", $"'{pattern}'");
        return Enumerable.Range(0, layers).Select(i => pattern.Replace("%d", i.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)).ToArray();
    }
}
