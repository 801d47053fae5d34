using System.Diagnostics;
using System.Runtime.InteropServices;
using Microsoft.ML.OnnxRuntime;
using Microsoft.ML.OnnxRuntime.Tensors;
using OrtKvTier.Cache;
using OrtKvTier.Tiers;
using OrtKvTier.Diagnostics;
using OrtKvTier.Inference;
using OrtKvTier.Model;
using OrtKvTier.Storage;
using OrtKvTier.Keys;
using OrtKvTier.Tensors;

namespace OrtKvTier.Generation;

/// <summary>
/// Our generation loop over <see cref="InferenceSession"/> + <see cref="OrtIoBinding"/>, shaped
/// like GenAI's <c>Generator</c>: <see cref="AppendTokens"/> runs the model over new tokens,
/// <see cref="GenerateNextToken"/> picks the next token (running the previous one first),
/// <see cref="IsDone"/>, <see cref="Sequence"/>, <see cref="RewindTo"/>. Works in both KV modes of
/// <see cref="KvLayout.SharedBuffer"/>. One sequence: batch 1, or a row of a <see cref="GenerationBatch"/> (its decode
/// steps run with the other rows'); not thread-safe.
/// <para>With a <see cref="PrefixCache"/>, <see cref="AppendTokens"/> first restores the longest
/// cached prefix of the sequence (always leaving the last token to run), and
/// <see cref="CaptureToCache"/> stores the computed full chunks for later requests.</para>
/// </summary>
public sealed class KvGenerator : IDisposable
{
    private readonly KvModel _model;
    private readonly ModelStep _step;
    /// <summary>The past of a generator alone (null in a batch: its row holds it).</summary>
    private readonly PastKeyValues? _ownPast;
    private readonly TokenSampler _sampler;
    private readonly List<int> _sequence = [];
    private readonly float[] _logits;
    private bool _logitsCurrent;
    private bool _lastWasGenerated;
    private bool _disposed;
    private readonly PrefixCache? _cache;
    /// <summary>How this generator's keys are made (its tenant's chain); set with the cache.</summary>
    private readonly ChunkChain? _chain;
    private readonly List<ChunkKey> _chunkKeys = [];
    /// <summary>Leading chunks of the sequence known to be in the cache (restored or captured).</summary>
    private int _cachedChunks;
    /// <summary>The background capture not waited for yet, and the leading chunks it stores.</summary>
    private Task<int>? _capture;
    private int _capturedChunks;
    /// <summary>Rows from here on hold moved documents (approximate): never captured under the prompt's exact keys.</summary>
    private int _approximateFrom = int.MaxValue;
    /// <summary>The generator's row when it runs in a <see cref="GenerationBatch"/>; null alone.</summary>
    private readonly BatchRow? _row;

    /// <summary>
    /// Creates a generator; <paramref name="search"/> defaults to the model's config. With
    /// <paramref name="cache"/> (opened for this model), prompts restore cached prefixes. A
    /// <paramref name="tenant"/> (chosen by the application, for example from an API key; never from what
    /// an end user types) gets chunk keys no other tenant computes: it hits only its own entries, and
    /// nobody can tell by timing whether another tenant's prompt is cached.
    /// </summary>
    public KvGenerator(KvModel model, SearchOptions? search = null, PrefixCache? cache = null, string? tenant = null)
        : this(model, search, cache, cache?.ChainFor(tenant), row: null) { }

    /// <summary>A generator in a batch's row (<see cref="GenerationBatch.Join"/>).</summary>
    internal KvGenerator(KvModel model, SearchOptions search, PrefixCache? cache, string? tenant, BatchRow row)
        : this(model, search, cache, cache?.ChainFor(tenant), row) { }

    /// <summary>A generator whose chunks are keyed by <paramref name="chain"/> (documents: their own chain).</summary>
    private KvGenerator(KvModel model, SearchOptions? search, PrefixCache? cache, ChunkChain? chain, BatchRow? row)
    {
        ArgumentNullException.ThrowIfNull(model);
        search ??= SearchOptions.FromConfig(model);
        search.Validate(model);
        if (cache is not null) RequireCacheFor(model, cache);
        _model = model;
        _cache = cache;
        _chain = chain;
        Search = search;
        _sampler = new TokenSampler(search, model.EosTokenIds);
        _logits = new float[model.VocabSize];
        _row = row;
        _ownPast = row is null ? PastKeyValues.Create(model.Layout, KvMemory.For(model)) : null;
        _step = new ModelStep(model);
    }

    /// <summary>The options in force.</summary>
    public SearchOptions Search { get; }

    /// <summary>Prompt and generated tokens so far.</summary>
    public IReadOnlyList<int> Sequence => _sequence;

    /// <summary>Tokens whose keys and values are computed (the rest run on the next step).</summary>
    public int ComputedTokens => _past.Length;

    /// <summary>The past: the generator's own, or its row's in a batch (empty until the row first appends a prompt and gets its place).</summary>
    private PastKeyValues _past => _row?.Past ?? _ownPast!;

    /// <summary>True once an end-of-sequence token was generated or <see cref="SearchOptions.MaxLength"/> is reached.</summary>
    public bool IsDone =>
        _sequence.Count >= Search.MaxLength || (_lastWasGenerated && _model.EosTokenIds.Contains(_sequence[^1]));

    /// <summary>Logits over the vocabulary for the token after <see cref="Sequence"/>, computing what is pending.</summary>
    public ReadOnlySpan<float> GetLogits()
    {
        ComputePending(prompt: false);
        return _logits;
    }

    internal PastKeyValues Past => _past;

    /// <summary>The cache in use, or null.</summary>
    public PrefixCache? Cache => _cache;

    /// <summary>What the restore of the last <see cref="AppendTokens"/> call found (<see cref="PrefixRestoreReport.None"/> without a cache).</summary>
    public PrefixRestoreReport LastRestore { get; private set; } = PrefixRestoreReport.None();

    /// <summary>Tokens the last <see cref="AppendTokens"/> call ran through the model.</summary>
    public int LastPrefillTokens { get; private set; }

    /// <summary>Milliseconds the last <see cref="AppendTokens"/> call spent running the model.</summary>
    public double LastPrefillMs { get; private set; }

    /// <summary>
    /// Stores every computed full chunk of the sequence that the cache does not hold yet (after
    /// a prompt and after generation, so the next turn hits). Returns the chunks stored (not counting
    /// those of a background capture it waits for first); 0 without a cache.
    /// </summary>
    public int CaptureToCache()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        WaitForCapture();
        if (PlanCapture() is not { } capture) return 0;
        int stored = capture.Run();
        _cachedChunks = Math.Max(_cachedChunks, capture.Chunks);
        return stored;
    }

    /// <summary>
    /// Like <see cref="CaptureToCache"/>, on a pool thread: generation goes on meanwhile (the tensors it reads
    /// are kept intact: a rewind, a new prompt, another capture or disposing the generator waits for it).
    /// The task gives the chunks stored, or the error that stopped it (the chunks then count as not cached,
    /// so the next capture stores them). Completed at once when there is nothing to store.
    /// </summary>
    public Task<int> CaptureToCacheInBackground()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        WaitForCapture();
        if (PlanCapture() is not { } capture) return Task.FromResult(0);
        _capturedChunks = capture.Chunks;
        return _capture = Task.Run(capture.Run);
    }

    /// <summary>A capture of the computed rows, ready to run on any thread: it stores the leading <see cref="Chunks"/> of the sequence.</summary>
    private sealed record PlannedCapture(Func<int> Run, int Chunks);

    /// <summary>Null when there is nothing to store; otherwise the capture, holding the past tensors it reads until it has run.</summary>
    private PlannedCapture? PlanCapture()
    {
        if (_cache is not { } cache || _chain is not { } chain) return null;
        int rows = Math.Min(_past.Length, _approximateFrom), chunks = chain.FullChunks(rows), from = _cachedChunks;
        bool toDeviceTier = cache.DeviceTierFor(_past.Memory) is not null;
        if (chunks <= from && (!toDeviceTier || chunks == 0)) return null;
        var tokens = CollectionsMarshal.AsSpan(_sequence)[..rows].ToArray();
        chain.Extend(_chunkKeys, tokens);
        var keys = _chunkKeys.GetRange(0, chunks);
        var hold = _past.Hold();
        return new PlannedCapture(() =>
        {
            using (hold) return cache.Capture(tokens, chain, keys, from, OrtKvTensors.View(hold.Tensors, hold.Capacity), _past.Memory);
        }, chunks);
    }

    /// <summary>Waits for a background capture; once it has stored its chunks they count as cached (its errors go to its task).</summary>
    private void WaitForCapture()
    {
        if (_capture is not { } capture) return;
        ((Task)capture).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing).GetAwaiter().GetResult();
        if (capture.IsCompletedSuccessfully) _cachedChunks = Math.Max(_cachedChunks, _capturedChunks);
        _capture = null;
    }

    /// <summary>Appends prompt tokens, restores what the cache holds of the sequence, and runs the model over the rest.</summary>
    public void AppendTokens(ReadOnlySpan<int> tokens)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (tokens.IsEmpty) throw new ArgumentException("AppendTokens needs at least one token.", nameof(tokens));
        RequireRoomFor(tokens, nameof(tokens));
        WaitForCapture();
        using var turn = _row?.EnterPromptTurn();
        _sequence.AddRange(tokens);
        _lastWasGenerated = false;
        _logitsCurrent = false;
        long start = Stopwatch.GetTimestamp();
        int pending;
        if (_row is { } row) pending = RestoreAndRunFirstPiece(row);
        else
        {
            if (_cache is { } cache) RestoreFromCache(cache);
            pending = _sequence.Count - _past.Length;
            start = Stopwatch.GetTimestamp();
        }
        using (var span = KvCacheMetrics.Activities.StartActivity("ortkv.prefill"))
        {
            span?.SetTag("ortkv.prefill_tokens", pending);
            ComputePending(prompt: true);
        }
        // In a batch, the prompt's chunks are stored before the turn passes on: a row with the same prefix restores them.
        if (_row is not null) CaptureToCache();
        LastPrefillTokens = pending;
        LastPrefillMs = KvCacheMetrics.Milliseconds(start);
        KvCacheMetrics.PrefillTokens.Add(pending);
        KvCacheMetrics.PrefillDuration.Record(LastPrefillMs);
    }

    /// <summary>
    /// In a batch: the restore and the prompt's first piece in one turn of the batch's thread (a step between them would only
    /// delay the prompts waiting behind this one); the rest follows piece by piece. Returns the prompt tokens left to run after the restore.
    /// </summary>
    private int RestoreAndRunFirstPiece(BatchRow row)
    {
        int pending = 0;
        row.Exclusive(() =>
        {
            if (_cache is { } cache) RestoreFromCache(cache);
            pending = _sequence.Count - _past.Length;
            int first = Math.Min(pending, row.PrefillChunkTokens);
            RunHere(CollectionsMarshal.AsSpan(_sequence).Slice(_past.Length, first));
            _logitsCurrent = first == pending;
        });
        return pending;
    }

    /// <summary>Throws unless <paramref name="tokens"/> fit after the sequence (<see cref="SearchOptions.MaxLength"/>) and are all in the vocabulary.</summary>
    private void RequireRoomFor(ReadOnlySpan<int> tokens, string parameter)
    {
        if (_sequence.Count + tokens.Length > Search.MaxLength)
            throw new ArgumentException($"The sequence would hold {_sequence.Count + tokens.Length} tokens; MaxLength is {Search.MaxLength} (SearchOptions.MaxLength; the model takes at most {_model.Layout.MaxLength}). Shorten the prompt.", parameter);
        foreach (var t in tokens)
            if ((uint)t >= (uint)_model.VocabSize)
                throw new ArgumentOutOfRangeException(parameter, t, $"Token ids must be in [0, {_model.VocabSize}).");
    }

    /// <summary>The recomputed leading tokens of each placed document, by default (see <see cref="AppendDocument"/>).</summary>
    public const int DefaultDocumentRecompute = 16;

    /// <summary>
    /// Appends a document whose keys and values may come from the cache wherever it stood before: its KV computed on its
    /// own (from position 0, under the cache's document keys, restored from any tier when held there), placed after what
    /// the sequence holds with its keys re-rotated to their new positions; its first <paramref name="recompute"/> tokens
    /// (and its last) are computed fresh against everything before them, where a document computed alone differs most.
    /// Approximate: the moved rows never attended to what now precedes them. Rows from the first moved document on are
    /// never stored under the prompt's exact keys. Needs a cache and a model whose positions can be moved
    /// (<see cref="KvModel.DocumentReuseRefusal"/>); KV in host memory.
    /// </summary>
    /// <exception cref="InvalidOperationException">No cache, a model whose keys cannot be moved, or device memory.</exception>
    public DocumentPlacement AppendDocument(ReadOnlySpan<int> document, int recompute = DefaultDocumentRecompute)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (document.IsEmpty) throw new ArgumentException("AppendDocument needs at least one token.", nameof(document));
        ArgumentOutOfRangeException.ThrowIfNegative(recompute);
        if (_cache is not { } cache) throw new InvalidOperationException("Document reuse needs a cache: create the generator with a PrefixCache.");
        if (_model.Rotary is not { } rotary) throw new InvalidOperationException($"Documents cannot be moved in {_model.Folder}: {_model.DocumentReuseRefusal}.");
        if (_past.Memory.OnDevice) throw new InvalidOperationException("Document reuse places keys in host memory; this generator's past is on the device.");
        RequireRoomFor(document, nameof(document));
        WaitForCapture();
        using var turn = _row?.EnterPromptTurn();
        if (_past.Length < _sequence.Count) ComputePending(prompt: true);
        int offset = _sequence.Count, fresh = Math.Min(recompute, document.Length - 1), moved = document.Length - 1 - fresh;

        // The document alone, from position 0: restored from its own keys where cached, the rest computed and stored.
        using var alone = new KvGenerator(_model, Search with { MaxLength = document.Length }, cache, cache.DocumentChainFor(_chain?.Tenant), row: null);
        alone.AppendTokens(document);
        alone.CaptureToCache();
        int cachedTokens = alone.LastRestore.RestoredTokens;

        if (fresh > 0) Run(document[..fresh], prompt: true);
        if (moved > 0)
        {
            _approximateFrom = Math.Min(_approximateFrom, _past.Length);
            int destination = _past.Length;
            OnRowThread(() =>
            {
                _past.Extend(moved);
                Place(alone.Past, fresh, destination, moved, rotary, offset);
            });
        }
        _sequence.AddRange(document);
        _lastWasGenerated = false;
        _logitsCurrent = false;
        return new DocumentPlacement(offset, document.Length, cachedTokens, moved, document.Length - moved, offset);
    }

    /// <summary>Copies rows <paramref name="from"/>..+<paramref name="rows"/> of <paramref name="source"/> to row <paramref name="to"/> of this past, keys moved by <paramref name="delta"/>.</summary>
    private void Place(PastKeyValues source, int from, int to, int rows, RotaryPositions rotary, int delta)
    {
        var layout = _model.Layout;
        int row = (int)layout.BytesPerHeadToken;
        for (int layer = 0; layer < layout.Layers; layer++)
            foreach (bool value in new[] { false, true })
            {
                var src = source.TensorBytes(layer, value);
                var dst = _past.TensorBytes(layer, value);
                for (int h = 0; h < layout.KvHeads; h++)
                {
                    var target = dst.Slice(((h * _past.Capacity) + to) * row, rows * row);
                    src.Slice(((h * source.Capacity) + from) * row, rows * row).CopyTo(target);
                    if (!value) KeyRotation.Rotate(target, rows, layout.HeadSize, layout.ElementSize, rotary, delta);
                }
            }
    }

    /// <summary>
    /// Teacher forcing: appends <paramref name="tokens"/> and returns, for each, the distribution the model gave it before
    /// it was appended (row i of <c>[tokens, vocab]</c> predicts token i). The last token stays pending.
    /// </summary>
    internal float[] ScoreNext(ReadOnlySpan<int> tokens)
    {
        if (_row is not null) throw new InvalidOperationException("Teacher forcing runs on a generator of its own, not in a batch.");
        int vocab = _model.VocabSize;
        var rows = new float[tokens.Length * vocab];
        int pending = _sequence.Count - _past.Length, first = 0;
        if (pending == 0)
        {
            if (!_logitsCurrent) throw new InvalidOperationException("No logits for the next token: nothing is pending and the last run's were discarded.");
            _logits.CopyTo(rows.AsSpan(0, vocab));
            first = 1;
        }
        _sequence.AddRange(tokens);
        var run = CollectionsMarshal.AsSpan(_sequence)[_past.Length..^1];
        if (run.IsEmpty) return rows;
        using (var logits = _step.Run(_past, run))
            for (int i = first; i < tokens.Length; i++)
                _step.CopyRow(logits, pending - 1 + i, rows.AsSpan(i * vocab, vocab));
        _logitsCurrent = false;
        _lastWasGenerated = false;
        return rows;
    }

    /// <summary>Runs what is pending, picks the next token and appends it (it runs on the next step).</summary>
    public int GenerateNextToken()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_sequence.Count == 0) throw new InvalidOperationException("Append prompt tokens before generating.");
        if (IsDone) throw new InvalidOperationException($"Generation is done ({(_sequence.Count >= Search.MaxLength ? "max length reached" : "end of sequence")}); rewind or start a new generator.");
        ComputePending(prompt: false);
        int token = _sampler.Next(_logits, _sequence);
        _sequence.Add(token);
        _lastWasGenerated = true;
        _logitsCurrent = false;
        if (IsDone) _row?.StopDecoding();
        return token;
    }

    /// <summary>Keeps the first <paramref name="length"/> tokens; the next step recomputes from there.</summary>
    public void RewindTo(int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (length < 0 || length > _sequence.Count)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"Rewind to a length between 0 and the current {_sequence.Count}.");
        WaitForCapture();
        _sequence.RemoveRange(length, _sequence.Count - length);
        if (length <= _approximateFrom) _approximateFrom = int.MaxValue;
        // Keep the last token pending so its logits are computed again on the next step.
        int keep = Math.Max(0, length - 1);
        if (_past.Length > keep) _past.Truncate(keep);
        if (_chain is not null)
        {
            int chunks = _chain.FullChunks(_past.Length);
            if (_chunkKeys.Count > chunks) _chunkKeys.RemoveRange(chunks, _chunkKeys.Count - chunks);
            _cachedChunks = Math.Min(_cachedChunks, chunks);
        }
        _logitsCurrent = false;
        _lastWasGenerated = false;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed) return;
        WaitForCapture();
        _disposed = true;
        _step.Dispose();
        if (_row is not null) _row.Leave();
        else _past.Dispose();
    }

    private void RestoreFromCache(PrefixCache cache)
    {
        LastRestore = cache.Restore(CollectionsMarshal.AsSpan(_sequence), _past.Length, _past.Memory, _chain!, _past.PreparedForRestore, _model.RunCosts);
        // Chunks that came from host memory need no capture; the others are promoted by the next capture.
        int fromHost = 0;
        while (fromHost < LastRestore.ChunkTiers.Count && LastRestore.ChunkTiers[fromHost] == TierId.Host.Name) fromHost++;
        if (LastRestore.RestoredTokens > 0) _cachedChunks = Math.Min(fromHost, LastRestore.RestoredTokens / cache.ChunkTokens);
        if (LastRestore.RestoredTokens >= _approximateFrom) _approximateFrom = int.MaxValue; // the past was replaced by exact rows
    }

    private static void RequireCacheFor(KvModel model, PrefixCache cache)
    {
        if (cache.Identity.Fingerprint != model.Fingerprint || cache.Layout.ShapeKey != model.Layout.ShapeKey)
            throw new ArgumentException(
                $"The cache was opened for model {cache.Identity.Fingerprint} ({cache.Identity.LayoutText}); this generator runs {model.Fingerprint} from {model.Folder}. " +
                "Open a cache with PrefixCache.Open(model, options) for this model.", nameof(cache));
    }

    /// <summary>Runs what is pending: a <paramref name="prompt"/>'s tokens, or the one token generated last (in a batch: in the next decode step).</summary>
    private void ComputePending(bool prompt)
    {
        if (_logitsCurrent) return;
        int start = _past.Length;
        if (start == _sequence.Count)
            throw new InvalidOperationException("No logits: every token is computed but the last run's logits were discarded.");
        Run(CollectionsMarshal.AsSpan(_sequence)[start..], prompt);
        _logitsCurrent = true;
    }

    private void Run(ReadOnlySpan<int> tokens, bool prompt)
    {
        if (_row is null)
        {
            RunHere(tokens);
            return;
        }
        if (!prompt && tokens.Length == 1)
        {
            _row.Decode(tokens[0], _logits);
            return;
        }
        // A prompt runs in pieces between the batch's decode steps.
        for (int at = 0; at < tokens.Length; at += _row.PrefillChunkTokens)
        {
            var piece = tokens.Slice(at, Math.Min(_row.PrefillChunkTokens, tokens.Length - at)).ToArray();
            _row.Exclusive(() => RunHere(piece));
        }
    }

    private void RunHere(ReadOnlySpan<int> tokens)
    {
        using var logits = _step.Run(_past, tokens);
        _step.CopyRow(logits, tokens.Length - 1, _logits);
    }

    /// <summary>Runs work that writes the past where writes to it belong: here, or in a batch on the batch's thread between steps.</summary>
    private void OnRowThread(Action work)
    {
        if (_row is null) work();
        else _row.Exclusive(work);
    }
}
