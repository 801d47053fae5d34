using Microsoft.ML.OnnxRuntime;

namespace OrtKvTier.Model;

/// <summary>How <see cref="KvModel.Load"/> opens the decoder.</summary>
public sealed class KvModelOptions
{
    /// <summary>Threads for one operator; 0 lets ONNX Runtime choose (one per core). Default 0.</summary>
    public int IntraOpThreads { get; init; }

    /// <summary>
    /// Overrides <c>search.past_present_share_buffer</c> from the config: true binds one
    /// max-length buffer as past and present, false grows past/present each step. Default: the config's.
    /// </summary>
    public bool? SharedBuffer { get; init; }

    /// <summary>Where the decoder runs. Default <see cref="ExecutionDevice.Cpu"/>.</summary>
    public ExecutionDevice Device { get; init; } = ExecutionDevice.Cpu;

    /// <summary>Which CUDA device (index among those ONNX Runtime offers). Default 0.</summary>
    public int CudaDeviceIndex { get; init; }

    /// <summary>Path of <c>libonnxruntime_providers_cuda.so</c>; default: next to <c>libonnxruntime.so</c>.</summary>
    public string? CudaProviderPath { get; init; }

    /// <summary>When CUDA was asked for but cannot run: true (default) runs on the CPU and says why in <see cref="KvModel.DeviceNote"/>; false throws.</summary>
    public bool FallBackToCpu { get; init; } = true;

    /// <summary>Called last on the session options, to add what this class does not expose.</summary>
    public Action<SessionOptions>? ConfigureSession { get; init; }

    /// <summary>Throws when a value is out of range.</summary>
    public void Validate()
    {
        if (IntraOpThreads < 0)
            throw new ArgumentOutOfRangeException(nameof(IntraOpThreads), IntraOpThreads, "IntraOpThreads must be 0 (ONNX Runtime's choice) or positive.");
        if (CudaDeviceIndex < 0)
            throw new ArgumentOutOfRangeException(nameof(CudaDeviceIndex), CudaDeviceIndex, "CudaDeviceIndex must not be negative.");
    }
}
