using System.Text.Json;

namespace OrtKvTier.Console.Commands;

/// <summary>Writes one JSON object to stdout.</summary>
internal static class JsonOutput
{
    public static void Write(Action<Utf8JsonWriter> body)
    {
        using var stdout = System.Console.OpenStandardOutput();
        using (var w = new Utf8JsonWriter(stdout))
        {
            w.WriteStartObject();
            body(w);
            w.WriteEndObject();
        }
        stdout.WriteByte((byte)'\n');
    }
}
