using System.Diagnostics;
using System.Globalization;
using Microsoft.ML.OnnxRuntime;
using OrtKvTier.Model;
using OrtKvTier.ModelBuilder;

namespace OrtKvTier.Benchmarks.Commands;

// BenchmarkDotNet's parser brings a global namespace named CommandLine.
using OrtKvTier.Console;
using OrtKvTier.Console.Commands;
using CommandLine = OrtKvTier.Console.CommandLine;

/// <summary>
/// <c>ortkv-bench load</c>: what opening a folder costs, <c>KvModel.Load</c> (session, checks and the
/// fingerprint of every file the graph references) against GenAI's <c>new Model(folder)</c>, alternated rep by
/// rep on the bench model and on a model of about 1.4 GB with external data (both built on demand), with the
/// fingerprint alone beside them. The files are in the page cache after the first rep.
/// </summary>
internal static class BenchLoadCommand
{
    public const string Usage =
        "  load [--model DIR ...] [--reps R] [--json]   (default: models/bench and models/bench-large, 3 reps)";

    public static int Run(CommandLine cl)
    {
        int reps = cl.Int("reps", 3, 1);
        bool json = cl.Flag("json");
        var folders = cl.String("model") is { } given ? given.Split(',') : [BenchModel.Resolve(null), BenchModel.ResolveLarge()];
        cl.RejectUnknown();
        OrtEnv.Instance();
        var rows = new List<(string Folder, long Bytes, double Ours, double GenAi, double Fingerprint)>();
        foreach (var folder in folders)
        {
            long bytes = Directory.GetFiles(folder).Sum(f => new FileInfo(f).Length);
            var ours = new List<double>();
            var genAi = new List<double>();
            var fingerprint = new List<double>();
            LoadOurs(folder);
            LoadGenAi(folder); // warm-up: both read the files once
            for (int rep = 0; rep < reps; rep++)
            {
                foreach (bool oursFirst in rep % 2 == 0 ? new[] { true, false } : [false, true])
                    (oursFirst ? ours : genAi).Add(oursFirst ? LoadOurs(folder) : LoadGenAi(folder));
                fingerprint.Add(Fingerprint(folder));
                Progress($"{Path.GetFileName(folder)} rep {rep + 1}/{reps}: KvModel.Load {ours[^1]:F0} ms, GenAI Model {genAi[^1]:F0} ms, fingerprint {fingerprint[^1]:F0} ms");
            }
            rows.Add((folder, bytes, BenchModel.Median(ours), BenchModel.Median(genAi), BenchModel.Median(fingerprint)));
        }

        if (json)
            JsonOutput.Write(w =>
            {
                w.WriteNumber("cores", Environment.ProcessorCount);
                w.WriteStartArray("rows");
                foreach (var r in rows)
                {
                    w.WriteStartObject();
                    w.WriteString("model", Path.GetFileName(r.Folder));
                    w.WriteNumber("folder_bytes", r.Bytes);
                    w.WriteNumber("kvmodel_load_ms", Math.Round(r.Ours, 1));
                    w.WriteNumber("genai_model_ms", Math.Round(r.GenAi, 1));
                    w.WriteNumber("fingerprint_ms", Math.Round(r.Fingerprint, 1));
                    w.WriteNumber("ours_over_genai", Math.Round(r.Ours / r.GenAi, 2));
                    w.WriteEndObject();
                }
                w.WriteEndArray();
            });
        else
            foreach (var r in rows)
                System.Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{Path.GetFileName(r.Folder)} ({r.Bytes / 1e9:F2} GB): KvModel.Load {r.Ours:F0} ms, GenAI Model {r.GenAi:F0} ms ({r.Ours / r.GenAi:F2}×), fingerprint {r.Fingerprint:F0} ms"));
        return 0;
    }

    private static double LoadOurs(string folder)
    {
        var clock = Stopwatch.StartNew();
        using var model = KvModel.Load(folder);
        return clock.Elapsed.TotalMilliseconds;
    }

    private static double LoadGenAi(string folder)
    {
        var clock = Stopwatch.StartNew();
        using var model = new Microsoft.ML.OnnxRuntimeGenAI.Model(folder);
        return clock.Elapsed.TotalMilliseconds;
    }

    private static double Fingerprint(string folder)
    {
        var decoder = Path.Combine(folder, "model.onnx");
        var external = OnnxModelFile.Read(decoder).ExternalDataFiles;
        using var model = KvModel.Load(folder);
        var clock = Stopwatch.StartNew();
        ModelFingerprint.Compute(decoder, external, Path.Combine(folder, "genai_config.json"), model.Layout);
        return clock.Elapsed.TotalMilliseconds;
    }

    private static void Progress(string line) => System.Console.Error.WriteLine(line);
}
