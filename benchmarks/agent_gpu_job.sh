#!/usr/bin/env bash
# How the agent's end-to-end rows of benchmarks/results/quality.* (and results/agent_decode.*) are made on a lent
# 2 x H100 host with no network, inputs arriving in pieces into $IN while this runs (each track waits for its files):
#   1. Qwen2.5-Coder-0.5B's agent stage: trained (TRAIN=1: the three stages on both GPUs, NPROC=2,
#      benchmarks/configs/quality-qwen05.yaml, on the prepared folder of the last quality run, qdata.tar.xz), or
#      TRAIN=0: the stage a former run brought back ($IN/qwen_agent_tuning.tgz, the pieces joined with cat).
#   2. The agent stages end to end, all held-out requests of a source at once (--e2e-width 0), at most
#      E2E_TIME_LIMIT seconds each: Qwen's and SmolLM2-135M's (smol_agent.tgz: trained in an earlier quality run on
#      the same agent_tuning.json, sha256 b1cdffdd...). ComplexFuncBench is split in SHARDS (default 2) processes
#      per model (--e2e-shard K/SHARDS, shard K on GPU K mod the host's GPUs, merged by toolgen.e2e_merge); Qwen's
#      loops start as soon as its stage is there. NESTFUL=1 and STEPWISE=1 (the defaults) add the NESTFUL loops and
#      Qwen's step-wise evaluation beside them.
#   3. DECODE=1: benchmarks/agent_decode.py once the loops are done, one model per GPU and nothing else on it.
#   setsid nohup bash benchmarks/agent_gpu_job.sh > /tmp/alogs/job.log 2>&1 &
# $IN receives wheels.tar (datasets, bm25s, gguf, nestful-wrapper...), qdata.tar.xz, qwen05.gguf, smol_agent.tgz,
# smol.gguf (and qwen_agent_tuning.tgz with TRAIN=0). Results land in $RES (metrics, transcripts), logs in $LOGS.
# Runs so far (benchmarks/results/quality.md):
#   - 2026-11-26 (1): training 9.5 min; the loops, one process per model and source (both models' ComplexFuncBench
#     loops on GPU 0), were cut at 420 s with 54 (Qwen) and 67 (SmolLM2) of 188 requests finished. The loop then
#     batched badly (fixed since: BatchingPolicy._gather) and held 8 steps at most (now 14).
#   - 2026-11-26 (2): the same with E2E_TIME_LIMIT=600 DECODE=0: 70 and 80 of 188 finished; NESTFUL finished in
#     66 s (Qwen) and 436 s (SmolLM2). A round of 188 loops took about a minute on a GPU shared by two models, so the
#     ComplexFuncBench loops are now split over both GPUs, answers come in segments of 128 tokens
#     (BatchingPolicy.SEGMENT), and the Qwen stage comes back for TRAIN=0.
#   - 2026-11-26 (3): one GPU, TRAIN=0 NESTFUL=0 STEPWISE=0 (both measured in full in run 2), two shards per model.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false   # JAX (imported by a library) would take 75 % of a GPU
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True        # several loops share a GPU
IN=${IN:-/tmp/in} RUN=${RUN_DIR:-/tmp/arun} SMOL=/tmp/smol/agent_tuning LOGS=${LOGS:-/tmp/alogs} RES=${RES:-/tmp/ares}
TL=${E2E_TIME_LIMIT:-900} DECODE=${DECODE:-0} TRAIN=${TRAIN:-1} SHARDS=${SHARDS:-2}
NESTFUL=${NESTFUL:-1} STEPWISE=${STEPWISE:-1} NGPU=$(nvidia-smi -L | wc -l)
SPLIT=${E2E_SPLIT:-test}   # val: the loops on agent_e2e_val.json (a prepared folder that has it), to choose settings
# E2E_ARGS: more toolgen.evaluate flags for every loop, e.g. "--e2e-block-repeats"
QCONF=benchmarks/configs/quality-qwen05.yaml QGGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
QWEN=$RUN/main/agent_tuning
mkdir -p "$LOGS" "$RES"
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels, install_smollm2
e2e() {   # GPU STAGE SOURCE NAME [K/N]: one model's loop on one source's held-out requests (or a shard of them)
  CUDA_VISIBLE_DEVICES=$1 python3 -m toolgen.evaluate --model "$2" --data "$RUN/data" --out "$RES/e2e_$4" \
    --e2e-only --no-base --e2e-width 0 --e2e-time-limit "$TL" --e2e-source "$3" ${5:+--e2e-shard "$5"} \
    --e2e-split "$SPLIT" ${E2E_ARGS:-} \
    > "$LOGS/e2e_$4.log" 2>&1 || say "e2e $4 failed (exit $?)"
}
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
install_wheels
waitfor "$IN/qdata.tar.xz"; mkdir -p "$RUN"; tar xJf "$IN/qdata.tar.xz" -C "$RUN"
waitfor "$IN/qwen05.gguf"; mkdir -p models; ln -sfn "$IN/qwen05.gguf" "$QGGUF"
python3 -c "from toolgen import models; print(models.resolve_model('gguf-file:$QGGUF'))"
say "qwen ready"
if [ "$TRAIN" = 1 ]; then
  CUDA_VISIBLE_DEVICES=0,1 NPROC=2 CONFIG=$QCONF RUN_DIR=$RUN VIEWS= PARTS=train bash benchmarks/quality.sh \
    > "$LOGS/qwen_train.log" 2>&1
  say "qwen trained"
else
  waitfor "$IN/qwen_agent_tuning.tgz"; mkdir -p "$RUN/main"; tar xzf "$IN/qwen_agent_tuning.tgz" -C "$RUN/main"
fi
cfb() {   # STAGE NAME: one model's ComplexFuncBench loops, SHARDS processes spread over the GPUs
  for ((k = 0; k < SHARDS; k++)); do e2e $((k % NGPU)) "$1" complexfuncbench "$2_cfb_$k" "$k/$SHARDS" & done
}
say "qwen loops start"
cfb "$QWEN" qwen
if [ "$NESTFUL" = 1 ]; then e2e 0 "$QWEN" nestful qwen_nestful & fi
install_smollm2
waitfor "$IN/smol_agent.tgz"; mkdir -p /tmp/smol; tar xzf "$IN/smol_agent.tgz" -C /tmp/smol
say "smollm2 loops start"
cfb "$SMOL" smol
if [ "$NESTFUL" = 1 ]; then e2e $((1 % NGPU)) "$SMOL" nestful smol_nestful & fi
if [ "$STEPWISE" = 1 ]; then
  CUDA_VISIBLE_DEVICES=$((1 % NGPU)) python3 -m toolgen.evaluate --config "$QCONF" --no-e2e --no-base --no-baselines \
    --set retrieval.prior=none --model "$QWEN" --data "$RUN/data" --out "$RES/qwen_stepwise" \
    > "$LOGS/qwen_stepwise.log" 2>&1 || say "step-wise evaluation failed"
fi
wait
for m in qwen smol; do
  python3 -m toolgen.e2e_merge --data "$RUN/data" --out "$RES/e2e_${m}_cfb" --e2e-split "$SPLIT" "$RES/e2e_${m}_cfb_"* \
    || say "merge $m failed"
done
say "loops done"
decode() {   # GPU STAGE NAME (the repository on the path: python3 benchmarks/x.py puts only benchmarks/ there)
  CUDA_VISIBLE_DEVICES=$1 PYTHONPATH=$PYTHONPATH:$PWD python3 benchmarks/agent_decode.py --model "$2" --data "$RUN/data" --rows 64 --repeats 3 \
    --out "$RES/decode_$3.json" > "$LOGS/decode_$3.log" 2>&1 || say "decode $3 failed"
}
if [ "$DECODE" = 1 ]; then decode 0 "$QWEN" qwen & decode 1 "$SMOL" smol & wait; fi
if [ "$TRAIN" = 1 ]; then   # to bring back (TRAIN=0 next time), in pieces under the 16 MiB a returned file may have
  tar czf - -C "$(dirname "$QWEN")" agent_tuning | split -b 15M -d - "$RES/qwen_agent_tuning.tgz."
fi
say "end"
