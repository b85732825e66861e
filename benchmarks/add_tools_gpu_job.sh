#!/usr/bin/env bash
# How benchmarks/results/add_tools.* are made on one lent GPU with no network: the inputs arrive in pieces into $IN
# (wheels.tar, toolbench.tar.xz, smol.gguf, mini.whl; see gpu_job_inputs.sh), then benchmarks/add_tools.sh runs whole
# (split, the 80 % chain, the sweep over CANDIDATES, the timed addition, the timed full retrain, the evaluations with
# BM25 + MiniLM, the report).
#   CANDIDATES="0.3:1e-2:new_rows:1 ..." setsid nohup bash benchmarks/add_tools_gpu_job.sh > /tmp/ajob.log 2>&1 &
# UNTIL=retrieval by default: the chain and the addition stop at the retrieval stage (the metrics are retrieval NDCG
# and memorization; the agent stage would double the cost).
# Runs so far (results/add_tools.md): an H200 without a sweep; an H100 beside three other jobs with
# CANDIDATES="0.5:5e-4 0.7:3e-4" (MiniLM then came by a later transfer, so training ran first); then on one H200
# alone: CANDIDATES="0.3:1e-2:new_rows:1 0.5:1e-2:new_rows:1 0.3:3e-2:new_rows:1" (collected early, after the
# sweep), and CANDIDATES="0.3:1e-2:new_rows_head 0.5:1e-2:new_rows_head 0.5:1e-2:new_rows_head:3" (16 min).
# Then on GPU 3 of a 4 x H200 host (CUDA_VISIBLE_DEVICES=3 RUN_DIR=/tmp/addrun; the agent job on GPUs 0-2), four
# candidates (three new_rows_lora, one new_rows_head): 22 min; its times are slowed by the shared CPU.
# Then (one H200, 16.5 min): CANDIDATES="0.5:1e-2:new_rows_lora:1:1e-3:5:4 0.5:1e-2:new_rows_lora:1:1e-3:5:8
# 0.3:1e-2:new_rows_lora:2:1e-3:5:4" (the LoRA of the last 4 or 8 layers, add_tools.lora_layers).
# Latest (one H200, 19.9 min): VAL_FRACTION=0.25 CANDIDATES="0.3:1e-2:new_rows_lora:2:1e-3:5:4
# 0.3:1e-2:new_rows_lora:2:1e-3:5:4:align 0.3:1e-2:new_rows_lora:2:1e-3:1:4:new 0.3:1e-2:new_rows_lora:2:1e-3:0.3:4:new"
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
# JAX (in the image, imported by a library) would pre-allocate 75 % of the GPU
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
export RUN_DIR=${RUN_DIR:-/tmp/arun} TOOLBENCH=${TOOLBENCH:-/tmp/shared/toolbench} UNTIL=${UNTIL:-retrieval}
export RESULTS=${RESULTS:-/tmp/aresults/add_tools}
IN=${IN:-/tmp/in}
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels, install_smollm2, install_minilm, install_toolbench
say "start on $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader)"
install_wheels
install_toolbench
install_smollm2
install_minilm
[ -z "${WRITER_CACHE:-}" ] || waitfor "$WRITER_CACHE"   # e.g. $IN/query_writer.jsonl: the llm view (add_tools.sh)
say "RUN_DIR=$RUN_DIR TOOLBENCH=$TOOLBENCH UNTIL=$UNTIL RESULTS=$RESULTS CANDIDATES=${CANDIDATES:-}"
SECONDS=0
bash benchmarks/add_tools.sh
say "add_tools.sh done in ${SECONDS}s"
say "end"
