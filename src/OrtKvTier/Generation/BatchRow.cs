using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// One sequence's place in a <see cref="GenerationBatch"/>: its slot of the batch's KV (<see cref="Past"/>), the tokens of KV
/// it reserved, and the way its generator reaches the batch's thread. Owned by one <see cref="KvGenerator"/>.
/// </summary>
internal sealed class BatchRow(GenerationBatch batch, int slot, int reservedTokens, PastKeyValues past, CancellationToken cancellation)
{
    private int _left;

    public int Slot { get; } = slot;

    public int ReservedTokens { get; } = reservedTokens;

    public PastKeyValues Past { get; } = past;

    /// <summary>Stops waits for the prompt turn (the request's own cancellation).</summary>
    public CancellationToken Cancellation { get; } = cancellation;

    /// <summary>Asked for decode steps since its last prompt (the scheduler's count of rows to gather).</summary>
    public bool Decoding { get; set; }

    /// <summary>Tokens of a prompt one exclusive piece runs at most.</summary>
    public int PrefillChunkTokens => batch.Options.MaxPrefillTokensPerStep;

    /// <summary>The next token's logits, from a batched decode step.</summary>
    public void Decode(int token, float[] logits) => batch.Scheduler.Decode(this, token, logits);

    /// <summary>Runs work that writes this row's KV on the batch's thread, between steps.</summary>
    public void Exclusive(Action work) => batch.Scheduler.Exclusive(this, work);

    public void StopDecoding() => batch.Scheduler.StopDecoding(this);

    /// <summary>Waits for the batch's prompt turn: one row appends a prompt at a time, so rows sharing a prefix compute it once.</summary>
    public IDisposable EnterPromptTurn() => batch.EnterPromptTurn(Cancellation);

    /// <summary>Gives the slot and the reserved tokens back (once).</summary>
    public void Leave()
    {
        if (Interlocked.Exchange(ref _left, 1) != 0) return;
        StopDecoding();
        batch.Leave(this);
    }
}
