#!/usr/bin/env bash
# The size of a CPU-only app on the OrtKvTier package (the README's package table): packs the library from this
# checkout (or takes --package-dir DIR holding OrtKvTier.VERSION.nupkg, e.g. an older build) into a local feed, builds a
# console app that loads models/tiny and its tokenizer, and prints the output sizes of `dotnet build` and of
# `dotnet publish -r linux-x64`. With --cpu-runtime the app also references the CPU ONNX Runtime and GenAI packages
# (needed since the package depends only on the managed ones).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/ortkv-app-size.XXXXXX)
trap 'rm -rf "$work"' EXIT
version=0.0.0-size$$; feed="$work/feed"; cpu=""
while [ $# -gt 0 ]; do
  case "$1" in
    --package-dir) feed=$2; version=$(ls "$feed"/OrtKvTier.*.nupkg | grep -v snupkg | head -1 | sed 's/.*OrtKvTier\.\(.*\)\.nupkg/\1/'); shift 2 ;;
    --cpu-runtime) cpu='<PackageReference Include="Microsoft.ML.OnnxRuntime" Version="1.31.1" /><PackageReference Include="Microsoft.ML.OnnxRuntimeGenAI" Version="0.18.0" />'; shift ;;
    *) echo "usage: $0 [--package-dir DIR] [--cpu-runtime]"; exit 2 ;;
  esac
done
[ -d "$feed" ] || dotnet pack "$root/src/OrtKvTier" -c Release -o "$feed" -p:Version="$version" >/dev/null
mkdir -p "$work/app" && cd "$work/app"
cat > nuget.config <<XML
<configuration><packageSources><clear /><add key="local" value="$feed" /><add key="nuget" value="https://api.nuget.org/v3/index.json" /></packageSources></configuration>
XML
cat > app.csproj <<XML
<Project Sdk="Microsoft.NET.Sdk"><PropertyGroup><OutputType>Exe</OutputType><TargetFramework>net10.0</TargetFramework><ImplicitUsings>enable</ImplicitUsings>
<NoWarn>NU1603;NU1608</NoWarn><ManagePackageVersionsCentrally>false</ManagePackageVersionsCentrally></PropertyGroup>
<ItemGroup><PackageReference Include="OrtKvTier" Version="$version" />$cpu</ItemGroup></Project>
XML
cat > Program.cs <<'CS'
using OrtKvTier.Model;
using var model = KvModel.Load(args[0]);
using var tokenizer = new ModelTokenizer(model.Folder);
Console.WriteLine($"{model.Layout.ShapeKey}, {tokenizer.Encode("hello world").Length} tokens");
CS
dotnet build -c Release >/dev/null
dotnet publish -c Release -r linux-x64 --self-contained false -o pub >/dev/null
echo "runs: $(dotnet bin/Release/net10.0/app.dll "$root/models/tiny")"
echo "dotnet build output: $(du -sm bin/Release/net10.0 | cut -f1) MB; publish -r linux-x64: $(du -sm pub | cut -f1) MB"
