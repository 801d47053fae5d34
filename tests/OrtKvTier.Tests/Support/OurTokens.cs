using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Tests.Support;

/// <summary>The tokens our loop generates after a prompt: what the parity tests compare with GenAI's.</summary>
internal static class OurTokens
{
    public static int[] Generate(KvModel model, int[] prompt, SearchOptions options)
    {
        using var generator = new KvGenerator(model, options);
        generator.AppendTokens(prompt);
        while (!generator.IsDone) generator.GenerateNextToken();
        return generator.Sequence.Skip(prompt.Length).ToArray();
    }

    public static int[] Greedy(KvModel model, int[] prompt, int maxLength) =>
        Generate(model, prompt, SearchOptions.FromConfig(model) with { MaxLength = maxLength, DoSample = false });
}
