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

    /// <summary>Called last on the session options, to add what this class does not expose.</summary>
    public Action<SessionOptions>? ConfigureSession { get; init; }

    /// <summary>Throws when a value is out of range.</summary>
    public void Validate()
    {
        if (IntraOpThreads < 0)
            throw new ArgumentOutOfRangeException(nameof(IntraOpThreads), IntraOpThreads, "IntraOpThreads must be 0 (ONNX Runtime's choice) or positive.");
    }
}
