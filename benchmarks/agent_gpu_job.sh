#!/usr/bin/env bash
# How the agent's end-to-end rows of benchmarks/results/quality.* (and results/agent_decode.*) were made on a lent
# 2 x H100 host with no network, inputs arriving in pieces into $IN while this runs (each track waits for its files):
#   1. Qwen2.5-Coder-0.5B: the three stages on both GPUs (NPROC=2, benchmarks/configs/quality-qwen05.yaml), on the
#      prepared folder of the last quality run (qdata.tar.xz: quality.sh's `data`, llm view from WRITER_CACHE).
#   2. The agent stage end to end, all held-out requests at once (--e2e-width 0), one process per source and model,
#      at most E2E_TIME_LIMIT seconds each: Qwen's (just trained) and SmolLM2-135M's agent stage (smol_agent.tgz:
#      trained in an earlier quality run on the same agent_tuning.json, sha256 b1cdffdd...). GPU 0 takes the
#      ComplexFuncBench loops, GPU 1 the NESTFUL loops and Qwen's evaluation without e2e (the step-wise metrics).
#   3. benchmarks/agent_decode.py once the loops are done, one model per GPU and nothing else on it.
#   setsid nohup bash benchmarks/agent_gpu_job.sh > /tmp/alogs/job.log 2>&1 &
# $IN receives wheels.tar (datasets, bm25s, gguf, nestful-wrapper...), qdata.tar.xz, qwen05.gguf, smol_agent.tgz,
# smol.gguf. Results land in $RES (metrics, transcripts, decode figures), logs in $LOGS.
# As it ran (benchmarks/results/quality.md, agent_decode.md): training 9.5 min, then the loops were cut by the time
# limit with 54 (Qwen) and 67 (SmolLM2) of 188 ComplexFuncBench requests finished; NESTFUL finished. The loop then
# batched badly (fixed since: BatchingPolicy._gather) and held 8 steps at most (now 14, evaluate.E2E_MAX_STEPS).
# The decode step failed on its import path (fixed above) and was rerun by hand with the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (imported by a library) would take 75 % of a GPU
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True        # several loops share a GPU
IN=${IN:-/tmp/in} RUN=${RUN_DIR:-/tmp/arun} SMOL=/tmp/smol/agent_tuning LOGS=${LOGS:-/tmp/alogs} RES=${RES:-/tmp/ares}
TL=${E2E_TIME_LIMIT:-420}
QCONF=benchmarks/configs/quality-qwen05.yaml QGGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN=$RUN/main/agent_tuning
mkdir -p "$LOGS" "$RES"
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels, install_smollm2
e2e() {   # GPU STAGE SOURCE NAME: one model's loop on one source's held-out requests
  CUDA_VISIBLE_DEVICES=$1 python3 -m toolgen.evaluate --model "$2" --data "$RUN/data" --out "$RES/e2e_$4" \
    --e2e-only --no-base --e2e-width 0 --e2e-time-limit "$TL" --e2e-source "$3" > "$LOGS/e2e_$4.log" 2>&1 \
    || say "e2e $4 failed (exit $?)"
}
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
install_wheels
waitfor "$IN/qdata.tar.xz"; mkdir -p "$RUN"; tar xJf "$IN/qdata.tar.xz" -C "$RUN"
waitfor "$IN/qwen05.gguf"; mkdir -p models; ln -sfn "$IN/qwen05.gguf" "$QGGUF"
python3 -c "from toolgen import models; print(models.resolve_model('gguf-file:$QGGUF'))"
say "qwen ready"
CUDA_VISIBLE_DEVICES=0,1 NPROC=2 CONFIG=$QCONF RUN_DIR=$RUN VIEWS= PARTS=train bash benchmarks/quality.sh \
  > "$LOGS/qwen_train.log" 2>&1
say "qwen trained"
install_smollm2
waitfor "$IN/smol_agent.tgz"; mkdir -p /tmp/smol; tar xzf "$IN/smol_agent.tgz" -C /tmp/smol
say "smollm2 ready; loops start"
e2e 0 "$QWEN" complexfuncbench qwen_cfb &
e2e 0 "$SMOL" complexfuncbench smol_cfb &
e2e 1 "$QWEN" nestful qwen_nestful &
e2e 1 "$SMOL" nestful smol_nestful &
CUDA_VISIBLE_DEVICES=1 python3 -m toolgen.evaluate --config "$QCONF" --no-e2e --no-base --no-baselines \
  --set retrieval.prior=none --model "$QWEN" --data "$RUN/data" --out "$RES/qwen_stepwise" \
  > "$LOGS/qwen_stepwise.log" 2>&1 || say "step-wise evaluation failed"
wait
say "loops done"
decode() {   # GPU STAGE NAME (the repository on the path: python3 benchmarks/x.py puts only benchmarks/ there)
  CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=$PYTHONPATH:$PWD python3 benchmarks/agent_decode.py --model "$2" --data "$RUN/data" --rows 64 --repeats 3 \
    --out "$RES/decode_$3.json" > "$LOGS/decode_$3.log" 2>&1 || say "decode $3 failed"
}
decode 0 "$QWEN" qwen & decode 1 "$SMOL" smol & wait
tar czf "$RES/qwen_agent_tuning.tgz" -C "$(dirname "$QWEN")" agent_tuning   # to bring back: no retraining next time
say "end"
