using Microsoft.Extensions.AI;
using Microsoft.Extensions.Options;
using OrtKvTier.Hosting;
using OrtKvTier.Model;
using OrtKvTier.Server;

// An OpenAI-compatible chat server on OrtKvTier. Settings: the OrtKvTier section (model, cache; see the README) and the
// Server section (API keys → tenants, concurrency, queue), from appsettings.json, environment (OrtKvTier__ModelFolder=...)
// or the command line (--OrtKvTier:ModelFolder=...). Default model: the repository's models/tiny.
var builder = WebApplication.CreateBuilder(args);
var section = builder.Configuration.GetSection(OrtKvTierOptions.SectionName);
if (string.IsNullOrEmpty(section["ModelFolder"]) && ShippedModel() is { } shipped) section["ModelFolder"] = shipped;
builder.Services.AddOrtKvTier(section).UseLogging();
builder.Services.Configure<ServerOptions>(builder.Configuration.GetSection("Server"));
builder.Services.AddSingleton(sp => new RequestQueue(sp.GetRequiredService<IOptions<ServerOptions>>().Value));

var app = builder.Build();
app.MapGet("/health", (KvModel model, IChatClient chat, RequestQueue queue) =>
    Results.Json(new { status = "ok", model = ChatCompletions.ModelId(chat), layout = model.Layout.ShapeKey, running = queue.Running, queued = queue.Queued }));
app.MapGet("/v1/models", (IChatClient chat) => Results.Json(new
{
    @object = "list",
    data = new[] { new { id = ChatCompletions.ModelId(chat), @object = "model", created = 0L, owned_by = "ortkvtier" } },
}));
app.MapPost("/v1/chat/completions", ChatCompletions.HandleAsync);
// Warm up before taking requests: the model, tokenizer and cache load now, not on the first request.
app.Services.GetRequiredService<IChatClient>();
app.Run();

static string? ShippedModel()
{
    foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "models", "tiny", "genai_config.json"))) return Path.Combine(dir.FullName, "models", "tiny");
    return null;
}
