using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Model;

/// <summary>Where the decoder runs.</summary>
public enum ExecutionDevice
{
    /// <summary>ONNX Runtime's CPU execution provider.</summary>
    Cpu,
    /// <summary>ONNX Runtime's CUDA execution provider (CUDA 13, cuDNN 9), falling back to the CPU when it cannot load.</summary>
    Cuda,
}

/// <summary>
/// Registers ONNX Runtime's CUDA execution provider library with the environment once per process
/// (<c>OrtEnv.RegisterExecutionProviderLibrary</c>) and finds its <see cref="OrtEpDevice"/>s.
/// </summary>
internal static class CudaExecutionProvider
{
    /// <summary>The provider's name in ONNX Runtime.</summary>
    public const string ProviderName = "CUDAExecutionProvider";

    /// <summary>The provider library's file name.</summary>
    public const string LibraryFileName = "libonnxruntime_providers_cuda.so";

    private const string RegistrationName = "ortkvtier-cuda";
    private static readonly object Gate = new();
    private static string? _registeredPath;

    /// <summary>
    /// The CUDA devices ONNX Runtime offers after loading the provider from <paramref name="libraryPath"/>
    /// (default: next to <c>libonnxruntime.so</c>). Empty, with <paramref name="reason"/> saying why, when
    /// the library or the CUDA libraries it needs are missing or no GPU is present.
    /// </summary>
    public static IReadOnlyList<OrtEpDevice> Devices(string? libraryPath, out string? reason)
    {
        OrtRuntime.EnsureLoaded();
        var env = OrtEnv.Instance();
        lock (Gate)
        {
            if (_registeredPath is null)
            {
                var path = libraryPath ?? FindLibrary();
                if (path is null || !File.Exists(path))
                {
                    reason = $"{LibraryFileName} was not found {(path is null ? $"next to libonnxruntime.so (looked in {string.Join(", ", NativeDirectories())})" : $"at {path}")}; " +
                        "reference Microsoft.ML.OnnxRuntime.Gpu or pass its path";
                    return [];
                }
                try
                {
                    env.RegisterExecutionProviderLibrary(RegistrationName, path);
                    _registeredPath = path;
                }
                catch (OnnxRuntimeException e)
                {
                    reason = $"ONNX Runtime could not load {path}: {e.Message.Trim()} (it needs CUDA 13 with cuBLAS, cudart and cuDNN 9 on the library path)";
                    return [];
                }
            }
        }
        var devices = env.GetEpDevices().Where(d => d.EpName == ProviderName).ToArray();
        reason = devices.Length == 0 ? $"{ProviderName} loaded from {_registeredPath} but offers no device (no GPU, or the driver is missing)" : null;
        return devices;
    }

    /// <summary>Directories searched for the provider library: the app's folder and its <c>runtimes/&lt;rid&gt;/native</c>.</summary>
    public static IEnumerable<string> NativeDirectories()
    {
        var baseDir = AppContext.BaseDirectory;
        yield return baseDir;
        yield return Path.Combine(baseDir, "runtimes", OperatingSystem.IsWindows() ? "win-x64" : "linux-x64", "native");
    }

    private static string? FindLibrary() =>
        NativeDirectories().Select(d => Path.Combine(d, LibraryFileName)).FirstOrDefault(File.Exists);
}
