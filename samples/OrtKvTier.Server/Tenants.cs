namespace OrtKvTier.Server;

/// <summary>Who a request is: the tenant its API key maps to (<see cref="ServerOptions.ApiKeys"/>).</summary>
public static class Tenants
{
    /// <summary>The request's tenant; "" when the server asks for no key; null when the key is missing or unknown.</summary>
    public static string? Authenticate(HttpContext context, ServerOptions options)
    {
        if (options.ApiKeys.Count == 0) return "";
        var header = context.Request.Headers.Authorization.ToString();
        const string Bearer = "Bearer ";
        if (!header.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase)) return null;
        return options.ApiKeys.TryGetValue(header[Bearer.Length..].Trim(), out var tenant) ? tenant : null;
    }
}
