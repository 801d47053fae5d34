using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(OrtKvTier.Benchmarks.SlotPoolBenchmarks).Assembly).Run(args);
