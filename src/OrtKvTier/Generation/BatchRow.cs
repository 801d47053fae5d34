using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// One sequence in a <see cref="GenerationBatch"/>: the tokens of KV it reserved, its slot of the batch's KV once it first
/// appends a prompt (<see cref="Past"/>; a row waiting for the prompt turn holds none, so it is never a dummy in the
/// others' steps), and the way its generator reaches the batch's thread. Owned by one <see cref="KvGenerator"/>.
/// </summary>
internal sealed class BatchRow(GenerationBatch batch, int reservedTokens, PastKeyValues unplaced, CancellationToken cancellation)
{
    private PastKeyValues? _placed;
    private int _left;

    /// <summary>The row of the batch's KV it holds; -1 before it first appends a prompt.</summary>
    public int Slot { get; private set; } = -1;

    public int ReservedTokens { get; } = reservedTokens;

    /// <summary>Its row of the batch's KV, or an empty past before it has one.</summary>
    public PastKeyValues Past => _placed ?? unplaced;

    /// <summary>Takes slot <paramref name="slot"/> of the batch's KV (once).</summary>
    public void PlaceAt(int slot, PastKeyValues past)
    {
        _placed = past;
        Slot = slot;
    }

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

    /// <summary>
    /// Waits for the batch's prompt turn (one row appends a prompt at a time, so rows sharing a prefix compute it once) and
    /// takes a slot of the batch's KV if it has none yet. A row appending a prompt asks for no decode step meanwhile.
    /// </summary>
    public IDisposable EnterPromptTurn()
    {
        StopDecoding();
        var turn = batch.EnterPromptTurn(Cancellation);
        try
        {
            if (_placed is null) batch.Place(this);
            return turn;
        }
        catch
        {
            turn.Dispose();
            throw;
        }
    }

    /// <summary>Gives the slot and the reserved tokens back (once).</summary>
    public void Leave()
    {
        if (Interlocked.Exchange(ref _left, 1) != 0) return;
        StopDecoding();
        batch.Leave(this);
    }
}
