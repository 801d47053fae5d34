using System.Diagnostics.CodeAnalysis;

namespace OrtKvTier.Collections;

/// <summary>
/// A map that keeps its entries in recency order, least recently used first: the one eviction order of
/// the slot index, the host tier and the device tier. A prefix cache's reuse follows recency (system
/// prompts and live conversations are touched on every request; finished ones age out). Every operation
/// is O(1). Not thread-safe: its owner guards it with its own lock.
/// </summary>
internal sealed class LruMap<TKey, TValue> where TKey : notnull
{
    private readonly Dictionary<TKey, LinkedListNode<(TKey Key, TValue Value)>> _byKey = [];
    private readonly LinkedList<(TKey Key, TValue Value)> _recency = new();

    public int Count => _byKey.Count;

    public bool ContainsKey(TKey key) => _byKey.ContainsKey(key);

    public bool TryGetValue(TKey key, [MaybeNullWhen(false)] out TValue value)
    {
        if (_byKey.TryGetValue(key, out var node))
        {
            value = node.Value.Value;
            return true;
        }
        value = default;
        return false;
    }

    /// <summary>Adds <paramref name="key"/> as the most recently used entry, replacing any entry it had.</summary>
    public void Set(TKey key, TValue value)
    {
        Remove(key, out _);
        _byKey[key] = _recency.AddLast((key, value));
    }

    /// <summary>Marks <paramref name="key"/> the most recently used; false when absent.</summary>
    public bool Touch(TKey key)
    {
        if (!_byKey.TryGetValue(key, out var node)) return false;
        if (node != _recency.Last)
        {
            _recency.Remove(node);
            _recency.AddLast(node);
        }
        return true;
    }

    public bool Remove(TKey key, [MaybeNullWhen(false)] out TValue value)
    {
        if (!_byKey.Remove(key, out var node))
        {
            value = default;
            return false;
        }
        _recency.Remove(node);
        value = node.Value.Value;
        return true;
    }

    /// <summary>The least recently used entry, if any.</summary>
    public bool TryPeekOldest(out TKey key, [MaybeNullWhen(false)] out TValue value)
    {
        if (_recency.First is { } first)
        {
            (key, value) = first.Value;
            return true;
        }
        (key, value) = (default!, default);
        return false;
    }

    public void Clear()
    {
        _byKey.Clear();
        _recency.Clear();
    }

    /// <summary>The values, least recently used first (a copy).</summary>
    public List<TValue> Values() => [.. _recency.Select(e => e.Value)];
}
