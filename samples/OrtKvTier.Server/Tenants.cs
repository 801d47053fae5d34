using System.Security.Cryptography;
using System.Text;

namespace OrtKvTier.Server;

/// <summary>One API key and the tenant it authenticates (<c>Server:ApiKeys:N:Key</c>, <c>Server:ApiKeys:N:Tenant</c>).</summary>
public sealed class ApiKey
{
    /// <summary>The key clients send as <c>Authorization: Bearer KEY</c>: compared exactly (letter case and every character count).</summary>
    public string Key { get; set; } = "";

    /// <summary>The tenant its requests run as: tenants never hit (or time) each other's cache entries.</summary>
    public string Tenant { get; set; } = "";
}

/// <summary>
/// Who a request is: the tenant its API key maps to. Keys are a list, not configuration keys, because configuration
/// keys merge when they differ only in letter case and cannot hold ':' — two tenants' keys must never merge.
/// </summary>
public sealed class Tenants
{
    private readonly Dictionary<string, string> _byKey;

    /// <summary>Checks the keys (each non-empty with a tenant, no key twice) and builds the lookup; an <see cref="InvalidOperationException"/> says what is wrong.</summary>
    public Tenants(IReadOnlyList<ApiKey> keys)
    {
        _byKey = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 0; i < keys.Count; i++)
        {
            if (string.IsNullOrWhiteSpace(keys[i].Key) || string.IsNullOrEmpty(keys[i].Tenant))
                throw new InvalidOperationException($"Server:ApiKeys:{i} needs a Key and a Tenant (Server:ApiKeys:{i}:Key, Server:ApiKeys:{i}:Tenant).");
            var key = keys[i].Key.Trim();
            if (_byKey.TryGetValue(key, out var other))
                throw new InvalidOperationException($"Server:ApiKeys:{i} repeats the key of an earlier entry (tenant '{other}'); give each key once.");
            _byKey[key] = keys[i].Tenant;
        }
    }

    /// <summary>Whether the server asks for a key at all.</summary>
    public bool Open => _byKey.Count == 0;

    /// <summary>The request's tenant; "" when the server asks for no key; null when the key is missing or unknown.</summary>
    public string? Authenticate(HttpContext context)
    {
        if (Open) return "";
        var header = context.Request.Headers.Authorization.ToString();
        const string Bearer = "Bearer ";
        if (!header.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase)) return null;
        return _byKey.GetValueOrDefault(header[Bearer.Length..].Trim());
    }

    /// <summary>
    /// The keys of the <c>Server:ApiKeys</c> section. The earlier form (<c>Server:ApiKeys:KEY=TENANT</c>) is refused, not
    /// read as no keys (that would open the server to everyone).
    /// </summary>
    public static List<ApiKey> Read(IConfigurationSection section)
    {
        var entries = section.GetChildren().ToList();
        if (entries.FirstOrDefault(e => !int.TryParse(e.Key, out _)) is { } old)
            throw new InvalidOperationException(
                $"Server:ApiKeys holds '{old.Key}' as a name: keys are a list now (Server:ApiKeys:0:Key=KEY, Server:ApiKeys:0:Tenant=TENANT), compared exactly. Rewrite each KEY=TENANT entry that way.");
        return section.Get<List<ApiKey>>() ?? [];
    }
}
