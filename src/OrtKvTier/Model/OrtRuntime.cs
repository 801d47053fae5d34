using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Model;

/// <summary>
/// Loads ONNX Runtime through its managed package before anything else touches it. GenAI finds
/// ONNX Runtime with <c>dlopen("libonnxruntime.so")</c> and crashes unless ORT was loaded first
/// (DESIGN.md section 1); after this call it reuses the GPU build's copy this package ships.
/// </summary>
internal static class OrtRuntime
{
    private static readonly Lazy<OrtEnv> Env = new(OrtEnv.Instance);

    public static OrtEnv EnsureLoaded() => Env.Value;
}
