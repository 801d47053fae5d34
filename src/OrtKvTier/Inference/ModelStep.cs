using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Inference;

/// <summary>
/// One run of the model over new tokens after a past, through one <see cref="OrtIoBinding"/>: the past grows by the
/// tokens and the logits of every new position come back (<c>[1, tokens, vocab]</c>). Not thread-safe.
/// </summary>
internal sealed class ModelStep(KvModel model) : IDisposable
{
    private readonly OrtIoBinding _binding = model.Session.CreateIoBinding();
    private readonly RunOptions _runOptions = new();

    /// <summary>Runs <paramref name="tokens"/> after <paramref name="past"/> (committed to it); the caller disposes the logits.</summary>
    public OrtValue Run(PastKeyValues past, ReadOnlySpan<int> tokens)
    {
        var names = model.Names;
        int total = past.Length + tokens.Length;
        var ids = new long[tokens.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];
        var mask = new long[total];
        Array.Fill(mask, 1L);

        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, [1, ids.Length]);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, [1, total]);
        using var positionsValue = names.PositionIds is null ? null : Positions(past.Length, tokens.Length, names.PositionIdsInt32);
        var logits = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, model.LogitsType, [1, tokens.Length, model.VocabSize]);
        _binding.ClearBoundInputs();
        _binding.ClearBoundOutputs();
        _binding.BindInput(names.InputIds, idsValue);
        _binding.BindInput(names.AttentionMask, maskValue);
        if (positionsValue is not null) _binding.BindInput(names.PositionIds!, positionsValue);
        _binding.BindOutput(names.Logits, logits);
        past.Bind(_binding, tokens.Length);
        long start = Stopwatch.GetTimestamp();
        try
        {
            model.Session.RunWithBinding(_runOptions, _binding);
            model.RunCosts.Record(tokens.Length, total - tokens.Length, Stopwatch.GetElapsedTime(start).TotalMilliseconds); // what computing costs, for the restore decision
        }
        catch
        {
            past.Abort();
            logits.Dispose();
            throw;
        }
        past.Commit(tokens.Length);
        return logits;
    }

    /// <summary>Copies row <paramref name="row"/> of <paramref name="logits"/> (from <see cref="Run"/>) as floats.</summary>
    public void CopyRow(OrtValue logits, int row, Span<float> destination)
    {
        int vocab = model.VocabSize;
        if (model.LogitsType == TensorElementType.Float16)
        {
            var halves = MemoryMarshal.Cast<byte, Half>(logits.GetTensorMutableRawData()).Slice(row * vocab, vocab);
            for (int i = 0; i < vocab; i++) destination[i] = (float)halves[i];
        }
        else
        {
            logits.GetTensorDataAsSpan<float>().Slice(row * vocab, vocab).CopyTo(destination);
        }
    }

    /// <summary>Positions <c>[1, count]</c> of the tokens after <paramref name="first"/> computed ones, as GenAI feeds a graph with a position-ids input.</summary>
    private static OrtValue Positions(int first, int count, bool int32)
    {
        if (int32) return OrtValue.CreateTensorValueFromMemory(Enumerable.Range(first, count).ToArray(), [1, count]);
        return OrtValue.CreateTensorValueFromMemory(Enumerable.Range(first, count).Select(p => (long)p).ToArray(), [1, count]);
    }

    public void Dispose()
    {
        _binding.Dispose();
        _runOptions.Dispose();
    }
}
