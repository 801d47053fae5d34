using OrtKvTier.ModelBuilder;

namespace OrtKvTier.Console.Commands;

/// <summary><c>build-model</c>: write a GenAI model folder with random weights for a given shape.</summary>
internal static class BuildModelCommand
{
    public static int Run(CommandLine cl)
    {
        var output = cl.String("out") ?? throw new UsageException("build-model needs --out DIR.");
        var shape = (cl.String("preset") ?? "tiny") switch
        {
            "tiny" => ModelShape.Tiny,
            "tiny-fp16" => ModelShape.TinyFp16,
            "bench" => ModelShape.Bench,
            var other => throw new UsageException($"--preset expects tiny, tiny-fp16 or bench; got '{other}'."),
        };
        var dtype = cl.String("dtype");
        var rotary = cl.String("rotary");
        var shared = cl.String("shared-buffer");
        shape = shape with
        {
            Layers = cl.Int("layers", shape.Layers, 1),
            Hidden = cl.Int("hidden", shape.Hidden, 1),
            Heads = cl.Int("heads", shape.Heads, 1),
            KvHeads = cl.Int("kv-heads", shape.KvHeads, 1),
            HeadSize = cl.Int("head-size", shape.HeadSize, 1),
            Intermediate = cl.Int("intermediate", shape.Intermediate, 1),
            Vocab = cl.Int("vocab", shape.Vocab, 1),
            MaxLength = cl.Int("max-length", shape.MaxLength, 2),
            Seed = cl.Int("seed", shape.Seed),
            DType = dtype switch
            {
                null => shape.DType,
                "fp32" => IoDType.Fp32,
                "fp16" => IoDType.Fp16,
                _ => throw new UsageException($"--dtype expects fp32 or fp16; got '{dtype}'."),
            },
            SharedBuffer = shared is null ? shape.SharedBuffer : GenerateCommand.ParseBool("shared-buffer", shared),
            Rotary = rotary switch
            {
                null => shape.Rotary,
                "attention" => RotaryPlacement.InAttention,
                "position-ids" => RotaryPlacement.PositionIds,
                _ => throw new UsageException($"--rotary expects attention or position-ids; got '{rotary}'."),
            },
            ExternalDataFile = cl.String("external-data") ?? shape.ExternalDataFile,
        };
        cl.RejectUnknown();
        try
        {
            ModelFolderBuilder.Build(output, shape);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
        System.Console.WriteLine($"wrote {Path.GetFullPath(output)}: {shape}");
        return 0;
    }
}
