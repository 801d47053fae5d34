using Microsoft.Extensions.AI;
using OrtKvTier.Chat;
using OrtKvTier.Generation;
using OrtKvTier.Model;

namespace OrtKvTier.Server.OpenAi;

/// <summary>
/// What every generation request passes, in this order, before the model runs: its API key, its model id, a place in the
/// <see cref="RequestQueue"/> (429 when full), and, inside that place (tokenizing is work), a prompt the model can take.
/// Each refusal is an <see cref="OpenAiErrorException"/>.
/// </summary>
public static class Admission
{
    private static readonly Dictionary<string, string> Fields = new()
    {
        ["Temperature"] = "temperature", ["TopP"] = "top_p", ["PresencePenalty"] = "presence_penalty", ["FrequencyPenalty"] = "frequency_penalty", ["LogitBias"] = "logit_bias",
    };

    public static string Tenant(HttpContext context) => context.RequestServices.GetRequiredService<Tenants>().Authenticate(context)
        ?? throw new OpenAiErrorException(new OpenAiError(401, "Incorrect or missing API key: send 'Authorization: Bearer KEY' with a key this server knows.", "invalid_request_error", null, "invalid_api_key"));

    public static void CheckModel(string requested, IChatClient chat)
    {
        if (requested != ChatModels.Id(chat))
            throw JsonFields.Invalid($"The model '{requested}' does not exist here; GET /v1/models lists '{ChatModels.Id(chat)}'.", "model", "model_not_found");
    }

    /// <summary>A generation slot (dispose it to free it).</summary>
    public static async Task<IDisposable> EnterAsync(RequestQueue queue, ServerOptions options, CancellationToken cancellationToken) =>
        await queue.EnterAsync(cancellationToken) ?? throw new OpenAiErrorException(new OpenAiError(429,
            "The server is busy: every generation slot and queue place is taken. Retry after the time in Retry-After.", "requests", null, "rate_limit_exceeded", options.RetryAfterSeconds));

    /// <summary>A generation slot for a prompt the model can take: the place in the queue first, then the prompt checked in it.</summary>
    public static async Task<IDisposable> EnterAsync(RequestQueue queue, ServerOptions options, IChatClient chat, KvModel model,
        IEnumerable<ChatMessage> messages, ChatOptions chatOptions, string field, CancellationToken cancellationToken)
    {
        var slot = await EnterAsync(queue, options, cancellationToken);
        try
        {
            CheckFits(chat, model, messages, chatOptions, field);
            return slot;
        }
        catch
        {
            slot.Dispose();
            throw;
        }
    }

    /// <summary>A prompt the model cannot take is a 400 before anything runs (a stream cannot change its status later).</summary>
    public static void CheckFits(IChatClient chat, KvModel model, IEnumerable<ChatMessage> messages, ChatOptions options, string field)
    {
        if (chat.GetService<KvChatClient>() is not { } client) return;
        int tokens;
        try
        {
            client.CheckOptions(options);
            tokens = client.PromptTokens(messages, options).Length;
        }
        catch (ArgumentException e)
        {
            throw JsonFields.Invalid(e.Message.Split(" (Parameter '")[0], e.ParamName is { } name && Fields.TryGetValue(name, out var param) ? param : field, "invalid_value");
        }
        if (tokens >= model.Layout.MaxLength)
            throw JsonFields.Invalid($"This model's maximum context length is {model.Layout.MaxLength} tokens; your messages are {tokens} tokens. Shorten the messages.", field, "context_length_exceeded");
        if (chat.GetService<GenerationBatch>() is { } batch && tokens + 1 > batch.MaxKvTokens)
            throw JsonFields.Invalid($"This server holds at most {batch.MaxKvTokens} tokens of KV for all requests together; your messages are {tokens} tokens. Shorten the messages.", field, "context_length_exceeded");
    }
}

/// <summary>The id clients name the served model by.</summary>
public static class ChatModels
{
    public static string Id(IChatClient chat) => chat.GetService<ChatClientMetadata>()?.DefaultModelId ?? "ortkvtier";

    public static object Describe(IChatClient chat) => new { id = Id(chat), @object = "model", created = 0L, owned_by = "ortkvtier" };
}
