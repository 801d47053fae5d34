using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Model;

/// <summary>
/// Loads ONNX Runtime through its managed package before anything else touches it. GenAI finds
/// ONNX Runtime with <c>dlopen("libonnxruntime.so")</c>; where the native libraries sit under
/// <c>runtimes/linux-x64/native/</c> it crashed (SIGSEGV) unless ORT was loaded first. After this call
/// it reuses the copy this package ships.
/// </summary>
internal static class OrtRuntime
{
    private static readonly Lazy<OrtEnv> Env = new(OrtEnv.Instance);

    public static OrtEnv EnsureLoaded() => Env.Value;
}
