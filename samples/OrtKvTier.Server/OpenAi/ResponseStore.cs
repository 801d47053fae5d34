using System.Text.Json.Nodes;
using Microsoft.Extensions.AI;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// Responses kept for <c>previous_response_id</c> and <c>GET /v1/responses/{id}</c>, in memory, per tenant (a tenant never
/// sees another's), at most <see cref="ServerOptions.StoredResponses"/>, the oldest dropped first. A conversation continued
/// from a stored response sends the same prompt prefix again, which the prefix cache then restores.
/// </summary>
public sealed class ResponseStore(ServerOptions options)
{
    /// <summary>A stored response: the conversation up to and including its output, and the response object.</summary>
    public sealed record Stored(IReadOnlyList<ChatMessage> Conversation, JsonObject Response);

    private readonly Dictionary<(string Tenant, string Id), Stored> _byId = [];
    private readonly Queue<(string Tenant, string Id)> _order = new();
    private readonly Lock _lock = new();

    public void Add(string tenant, string id, Stored stored)
    {
        if (options.StoredResponses <= 0) return;
        lock (_lock)
        {
            _byId[(tenant, id)] = stored;
            _order.Enqueue((tenant, id));
            while (_order.Count > options.StoredResponses) _byId.Remove(_order.Dequeue());
        }
    }

    public Stored? Find(string tenant, string id)
    {
        lock (_lock) return _byId.GetValueOrDefault((tenant, id));
    }
}
