using System.Net.Sockets;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using OrtKvTier.Generation;
using OrtKvTier.Hosting;
using OrtKvTier.Model;
using OrtKvTier.Server;
using OrtKvTier.Server.OpenAi;

// An OpenAI-compatible chat server on OrtKvTier. Settings: the OrtKvTier section (model, cache; see the README) and the
// Server section (API keys and their tenants, concurrency, queue, body limit), from appsettings.json, environment
// (OrtKvTier__ModelFolder=...) or the command line (--OrtKvTier:ModelFolder=...). Default model: the repository's models/tiny.
var builder = WebApplication.CreateBuilder(args);
var section = builder.Configuration.GetSection(OrtKvTierOptions.SectionName);
if (string.IsNullOrEmpty(section["ModelFolder"]) && ShippedModel() is { } shipped) section["ModelFolder"] = shipped;
builder.Services.AddOrtKvTier(section).UseLogging();
var serverSection = builder.Configuration.GetSection("Server");
builder.Services.Configure<ServerOptions>(serverSection);
Tenants tenants;
try
{
    tenants = new Tenants(Tenants.Read(serverSection.GetSection("ApiKeys")));
}
catch (InvalidOperationException e)
{
    Console.Error.WriteLine($"ortkv-server: {e.Message}");
    return 1;
}
builder.Services.AddSingleton(tenants);
builder.Services.AddSingleton(sp =>
{
    var server = sp.GetRequiredService<IOptions<ServerOptions>>().Value;
    return new RequestQueue(server, server.RunningLimit(sp.GetRequiredService<IChatClient>().GetService<GenerationBatch>()?.Options.MaxRows));
});
builder.Services.AddSingleton(sp => new ResponseStore(sp.GetRequiredService<IOptions<ServerOptions>>().Value));
// Kestrel's own limit is the most a body over the server's limit may send before its 413 (RequestBody sets each request's).
builder.WebHost.ConfigureKestrel(k => k.Limits.MaxRequestBodySize = Math.Max(RequestBody.DrainBytes, serverSection.Get<ServerOptions>()?.MaxRequestBodyBytes ?? 0));
// One line per request comes from RequestLog; ASP.NET Core's own per-request lines are left out unless configured.
if (builder.Configuration["Logging:LogLevel:Microsoft.AspNetCore"] is null) builder.Logging.AddFilter("Microsoft.AspNetCore", LogLevel.Warning);
// A failure to start is said once, below, in one line; the host's own report of it carries a stack trace.
builder.Logging.AddFilter("Microsoft.Extensions.Hosting.Internal.Host", LogLevel.Critical);

var app = builder.Build();
app.Use(RequestLog.Middleware);
app.MapGet("/health", (KvModel model, IChatClient chat, RequestQueue queue) =>
    Results.Json(new { status = "ok", model = ChatModels.Id(chat), layout = model.Layout.ShapeKey, running = queue.Running, queued = queue.Queued, batch = BatchState(chat) }));
app.MapGet("/v1/models", (IChatClient chat) => Results.Json(new { @object = "list", data = new[] { ChatModels.Describe(chat) } }));
app.MapGet("/v1/models/{id}", (HttpContext context, string id, IChatClient chat) => id == ChatModels.Id(chat) ? Results.Json(ChatModels.Describe(chat))
    : new OpenAiError(404, $"The model '{id}' does not exist here; GET /v1/models lists '{ChatModels.Id(chat)}'.", "invalid_request_error", "model", "model_not_found").ToResult(context));
app.MapPost("/v1/chat/completions", ChatCompletions.HandleAsync);
app.MapPost("/v1/responses", Responses.HandleAsync);
app.MapGet("/v1/responses/{id}", Responses.Get);

try
{
    // Load before taking requests: the model, tokenizer and cache load now, not on the first request.
    app.Services.GetRequiredService<IChatClient>();
}
catch (Exception e) when (e is not OutOfMemoryException)
{
    Console.Error.WriteLine($"ortkv-server: the model could not be loaded: {Innermost(e).Message} Set --OrtKvTier:ModelFolder=DIR (a GenAI model folder) or the OrtKvTier section of appsettings.json.");
    return 1;
}
try
{
    app.Run();
    return 0;
}
catch (Exception e) when (Innermost(e) is SocketException or IOException)
{
    Console.Error.WriteLine($"ortkv-server: could not listen: {Innermost(e).Message}. Pass a free address with --urls http://127.0.0.1:PORT (or ASPNETCORE_URLS).");
    return 1;
}
catch (Exception e)
{
    Console.Error.WriteLine($"ortkv-server: stopped by a fault: {e}");
    return 1;
}

// What the batch does now and has reached (null: each request runs its own loop).
static object? BatchState(IChatClient chat) => chat.GetService<GenerationBatch>() is not { } batch ? null : new
{
    max_rows = batch.Options.MaxRows, rows = batch.ActiveRows, waiting = batch.Waiting, kv_tokens_reserved = batch.ReservedTokens, kv_tokens_max = batch.MaxKvTokens,
    decode_steps = batch.DecodeSteps, mean_rows_per_step = Math.Round(batch.MeanRowsPerStep, 2), largest_step = batch.LargestStep,
};

static Exception Innermost(Exception e) => e.InnerException is { } inner && e is not OrtKvTier.Model.ModelFolderException ? Innermost(inner) : e;

static string? ShippedModel()
{
    foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "models", "tiny", "genai_config.json"))) return Path.Combine(dir.FullName, "models", "tiny");
    return null;
}
