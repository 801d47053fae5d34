using System.Text;
using System.Text.RegularExpressions;

namespace OrtKvTier.ModelBuilder;

/// <summary>
/// Learns byte-level BPE merges from a text (most frequent adjacent pair first, ties broken
/// by ordinal order so the result is deterministic), then, when the requested vocabulary is
/// larger than the text supports, adds synthetic merges of short existing tokens so every id
/// decodes to real bytes.
/// </summary>
internal static partial class BpeTrainer
{
    [GeneratedRegex(@"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")]
    private static partial Regex PreTokenizer();

    public static List<(string Left, string Right)> Train(string text, int mergeCount, int seed)
    {
        var words = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (Match m in PreTokenizer().Matches(text))
        {
            var symbol = ByteLevel.Encode(Encoding.UTF8.GetBytes(m.Value));
            words[symbol] = words.GetValueOrDefault(symbol) + 1;
        }
        var splits = words.Select(w => (Symbols: w.Key.Select(c => c.ToString()).ToList(), Count: w.Value)).ToList();
        var vocab = new HashSet<string>(ByteLevel.ByteToChar.Select(c => c.ToString()), StringComparer.Ordinal);
        var merges = new List<(string, string)>();

        while (merges.Count < mergeCount)
        {
            var pairs = new Dictionary<(string, string), int>();
            foreach (var (symbols, count) in splits)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    pairs[(symbols[i], symbols[i + 1])] = pairs.GetValueOrDefault((symbols[i], symbols[i + 1])) + count;
            var best = pairs.Where(p => p.Value >= 2 && !vocab.Contains(p.Key.Item1 + p.Key.Item2))
                .OrderByDescending(p => p.Value)
                .ThenBy(p => p.Key.Item1, StringComparer.Ordinal).ThenBy(p => p.Key.Item2, StringComparer.Ordinal)
                .Select(p => p.Key).FirstOrDefault();
            if (best == default) break;
            merges.Add(best);
            vocab.Add(best.Item1 + best.Item2);
            foreach (var (symbols, _) in splits)
                for (int i = 0; i + 1 < symbols.Count; i++)
                    if (symbols[i] == best.Item1 && symbols[i + 1] == best.Item2)
                    {
                        symbols[i] += symbols[i + 1];
                        symbols.RemoveAt(i + 1);
                    }
        }

        AddSyntheticMerges(merges, vocab, mergeCount, seed);
        return merges;
    }

    private static void AddSyntheticMerges(List<(string, string)> merges, HashSet<string> vocab, int mergeCount, int seed)
    {
        var rng = new SplitMix64((ulong)seed ^ 0x5EED_0F_B9E);
        var shortTokens = vocab.Where(t => t.Length <= 2).OrderBy(t => t, StringComparer.Ordinal).ToList();
        while (merges.Count < mergeCount)
        {
            var left = shortTokens[(int)(rng.Next() % (ulong)shortTokens.Count)];
            var right = shortTokens[(int)(rng.Next() % (ulong)shortTokens.Count)];
            if (!vocab.Add(left + right)) continue;
            merges.Add((left, right));
            if (left.Length + right.Length <= 2) shortTokens.Add(left + right);
        }
    }
}
