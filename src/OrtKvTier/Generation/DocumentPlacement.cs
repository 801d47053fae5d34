namespace OrtKvTier.Generation;

/// <summary>Where <see cref="KvGenerator.AppendDocument"/> put a document and how its keys and values came about.</summary>
/// <param name="Offset">Position of the document's first token in the sequence.</param>
/// <param name="Tokens">The document's tokens.</param>
/// <param name="CachedTokens">Of its KV computed alone, the tokens that came from the cache (the rest were computed alone now and stored).</param>
/// <param name="MovedTokens">Tokens whose KV was moved into place (keys re-rotated by <paramref name="Delta"/>), not computed in this sequence.</param>
/// <param name="RecomputedTokens">Tokens computed fresh in this sequence: the first ones and the last.</param>
/// <param name="Delta">How far the moved keys were rotated: the document's offset here minus its offset when computed (0).</param>
public sealed record DocumentPlacement(int Offset, int Tokens, int CachedTokens, int MovedTokens, int RecomputedTokens, int Delta);
