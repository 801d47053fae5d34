using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtKvTier.Model;
using OrtKvTier.Tensors;

namespace OrtKvTier.Inference;

/// <summary>
/// One run of the model over new tokens after a past, through one <see cref="OrtIoBinding"/>: the past grows by the
/// tokens and the logits of every new position come back (<c>[1, tokens, vocab]</c>); or one decode step of a batch. Not thread-safe.
/// </summary>
internal sealed class ModelStep(KvModel model) : IDisposable
{
    private readonly OrtIoBinding _binding = model.Session.CreateIoBinding();
    private readonly RunOptions _runOptions = new();

    /// <summary>Runs <paramref name="tokens"/> after <paramref name="past"/> (committed to it); the caller disposes the logits.</summary>
    public OrtValue Run(PastKeyValues past, ReadOnlySpan<int> tokens)
    {
        int count = tokens.Length, total = past.Length + count;
        var ids = new long[count];
        for (int i = 0; i < ids.Length; i++) ids[i] = tokens[i];
        var mask = new long[total];
        Array.Fill(mask, 1L);
        var positions = Enumerable.Range(past.Length, count).ToArray();
        var logits = RunBound(ids, [1, count], mask, [1, total], positions, binding => past.Bind(binding, count), past.Abort,
            ms => model.RunCosts.Record(count, total - count, ms)); // what computing costs, for the restore decision
        past.Commit(count);
        return logits;
    }

    /// <summary>
    /// One decode step of a batch: row b runs <paramref name="tokens"/>[b] at position <paramref name="positions"/>[b] (its
    /// tokens before it are in row b of <paramref name="batch"/>, <c>[rows, kvH, capacity, D]</c> tensors bound as past and
    /// present; GroupQueryAttention reads each row's length from its mask). Logits <c>[rows, 1, vocab]</c>; the caller disposes them.
    /// </summary>
    public OrtValue RunRows(OrtValue[] batch, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        int rows = tokens.Length, total = 0;
        foreach (int p in positions) total = Math.Max(total, p + 1);
        var ids = new long[rows];
        var mask = new long[rows * total];
        for (int b = 0; b < rows; b++)
        {
            ids[b] = tokens[b];
            mask.AsSpan(b * total, positions[b] + 1).Fill(1L);
        }
        return RunBound(ids, [rows, 1], mask, [rows, total], positions.ToArray(), binding => PastKeyValues.BindAsPastAndPresent(binding, model.Layout, batch),
            abort: null, ran: null);
    }

    /// <summary>Binds ids, mask, positions (when the graph takes them), logits and the past, runs, and returns the logits.</summary>
    private OrtValue RunBound(long[] ids, long[] idsShape, long[] mask, long[] maskShape, int[] positions, Action<OrtIoBinding> bindPast, Action? abort, Action<double>? ran)
    {
        var names = model.Names;
        using var idsValue = OrtValue.CreateTensorValueFromMemory(ids, idsShape);
        using var maskValue = OrtValue.CreateTensorValueFromMemory(mask, maskShape);
        using var positionsValue = names.PositionIds is null ? null : Positions(positions, idsShape, names.PositionIdsInt32);
        var logits = OrtValue.CreateAllocatedTensorValue(OrtAllocator.DefaultInstance, model.LogitsType, [idsShape[0], idsShape[1], model.VocabSize]);
        _binding.ClearBoundInputs();
        _binding.ClearBoundOutputs();
        _binding.BindInput(names.InputIds, idsValue);
        _binding.BindInput(names.AttentionMask, maskValue);
        if (positionsValue is not null) _binding.BindInput(names.PositionIds!, positionsValue);
        _binding.BindOutput(names.Logits, logits);
        bindPast(_binding);
        long start = Stopwatch.GetTimestamp();
        try
        {
            model.Session.RunWithBinding(_runOptions, _binding);
            ran?.Invoke(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
        }
        catch
        {
            abort?.Invoke();
            logits.Dispose();
            throw;
        }
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

    /// <summary>Position ids shaped like the input ids, as GenAI feeds a graph with a position-ids input.</summary>
    private static OrtValue Positions(int[] positions, long[] shape, bool int32) =>
        int32 ? OrtValue.CreateTensorValueFromMemory(positions, shape) : OrtValue.CreateTensorValueFromMemory(positions.Select(p => (long)p).ToArray(), shape);

    public void Dispose()
    {
        _binding.Dispose();
        _runOptions.Dispose();
    }
}
