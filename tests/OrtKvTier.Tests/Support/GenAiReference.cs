using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntimeGenAI;

namespace OrtKvTier.Tests.Support;

/// <summary>Runs ONNX Runtime GenAI's own <c>Generator</c> on a folder: the reference our loop must match.</summary>
internal static class GenAiReference
{
    private static readonly object Gate = new();

    public static int[] GreedyTokens(string folder, int[] prompt, int maxLength) => Tokens(folder, prompt, maxLength, forceGreedy: true);

    /// <summary>GenAI's tokens with the folder's own search options (only max_length set; do_sample forced off when <paramref name="forceGreedy"/>).</summary>
    public static int[] Tokens(string folder, int[] prompt, int maxLength, bool forceGreedy)
    {
        OrtEnv.Instance();
        lock (Gate)
        {
            using var model = new Microsoft.ML.OnnxRuntimeGenAI.Model(folder);
            using var parameters = new GeneratorParams(model);
            parameters.SetSearchOption("max_length", maxLength);
            if (forceGreedy) parameters.SetSearchOption("do_sample", false);
            using var generator = new Generator(model, parameters);
            generator.AppendTokens(prompt);
            while (!generator.IsDone()) generator.GenerateNextToken();
            return generator.GetSequence(0).ToArray()[prompt.Length..];
        }
    }
}
