using System.Numerics.Tensors;
using OrtKvTier.Tensors;

namespace OrtKvTier.Quality;

/// <summary>
/// Next-token distributions of an approximate computation against the exact one, position by position: how often the
/// most likely token is the same, their KL divergence (exact ‖ approximate), and the cross-entropy of the text's own next tokens.
/// </summary>
internal sealed class PredictionAgreement
{
    private int _positions, _agreed;
    private double _kl, _maxKl, _exactNats, _approximateNats;

    /// <summary>Positions added.</summary>
    public int Positions => _positions;
    /// <summary>Share of positions whose most likely token agrees.</summary>
    public double Top1Agreement => (double)_agreed / Math.Max(1, _positions);
    /// <summary>Mean KL divergence in nats.</summary>
    public double MeanKl => _kl / Math.Max(1, _positions);
    public double MaxKl => _maxKl;

    /// <summary>Adds one position: both logit rows and the token that came next in the text.</summary>
    public void Add(ReadOnlySpan<float> exact, ReadOnlySpan<float> approximate, int nextToken)
    {
        var p = LogSoftmax(exact);
        var q = LogSoftmax(approximate);
        double kl = 0;
        for (int i = 0; i < p.Length; i++) kl += Math.Exp(p[i]) * (p[i] - q[i]);
        kl = Math.Max(0, kl);
        _positions++;
        if (TensorPrimitives.IndexOfMax(exact) == TensorPrimitives.IndexOfMax(approximate)) _agreed++;
        _kl += kl;
        _maxKl = Math.Max(_maxKl, kl);
        _exactNats -= p[nextToken];
        _approximateNats -= q[nextToken];
    }

    /// <summary>Adds <c>[positions, vocab]</c> rows of each, the text's next tokens alongside.</summary>
    public void AddRows(ReadOnlySpan<float> exact, ReadOnlySpan<float> approximate, ReadOnlySpan<int> nextTokens, int vocab)
    {
        for (int i = 0; i < nextTokens.Length; i++) Add(exact.Slice(i * vocab, vocab), approximate.Slice(i * vocab, vocab), nextTokens[i]);
    }

    public EncodingQuality Result(KvEncoding encoding) => new()
    {
        Encoding = encoding, Positions = _positions, Top1Agreement = Top1Agreement, MeanKl = MeanKl, MaxKl = _maxKl,
        ExactNatsPerToken = _exactNats / Math.Max(1, _positions), EncodedNatsPerToken = _approximateNats / Math.Max(1, _positions),
    };

    private static double[] LogSoftmax(ReadOnlySpan<float> logits)
    {
        float max = TensorPrimitives.Max(logits);
        double sum = 0;
        foreach (var x in logits) sum += Math.Exp(x - max);
        double log = max + Math.Log(sum);
        var result = new double[logits.Length];
        for (int i = 0; i < result.Length; i++) result[i] = logits[i] - log;
        return result;
    }
}
