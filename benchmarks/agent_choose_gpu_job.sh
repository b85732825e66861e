#!/usr/bin/env bash
# The agent run that chooses on validation (issue 15), on a lent GPU host with no network (one card, or several: GPUS
# below), inputs arriving in pieces into $IN (each step waits for its file): wheels.tar, qdata.tar.xz (the quality
# run's prepared folder with agent_e2e_val.json, --input-doc names), one qdata_V.tar.xz per other variant V of VARIANTS
# (the same folder prepared otherwise: only the agent files differ; e.g. params = --input-doc params, recovery =
# --recovery-share 0.5), the base's GGUF file ($GGUF_IN, default qwen05.gguf).
#   1. Qwen2.5-Coder's chain (QCONF, default benchmarks/configs/quality-qwen05.yaml) with whole trajectories: the agent stage at
#      max_length 8192 (2048 cut 44 % of its targets: quality.md), every stage on packed rows with the varlen kernel.
#      One GPU holds the two-GPU global batches: per-device batch x2 for stages 1-2, accumulation for the agent.
#      A stage that fails on varlen is trained again as before (eager attention, padded rows; stages 1-2 only).
#      The retrieval stage comes back in pieces ($BACK/retrieval_training.tgz.NN; join them with cat); given as
#      $IN/retrieval_training.tgz to a later run (the same data and paths), stages 1-2 are not trained again (~5 min).
#   2. One agent stage per variant (VARIANTS, default "main params"; main = qdata.tar.xz), all from the same
#      retrieval stage, PARALLEL of them side by side (one card: default 2, three do not fit an 80 GB card beside
#      each other).
#   3. The loop on agent_e2e_val.json for each stage (context budget 8192), for each loop setting in SETTINGS
#      ("plain", "block" = --e2e-block-repeats; default "plain": run 1 found them within 0.3 points).
#      The rule, fixed before the run (benchmarks/e2e_choose.py): the highest ComplexFuncBench validation
#      call_accuracy on the requests every run finished (a time limit cuts different ones), ties to success_rate.
#      One variant and one setting: nothing to choose, no validation loops.
#   4. One test run of the choice (agent_e2e_test.json: ComplexFuncBench in TEST_SHARDS processes, NESTFUL), and the
#      step-wise metrics of the chosen stage on agent_test.json. Everything under $RES, packed into $RES.tgz at the end
#      (also when the job stops early); the chosen agent stage in pieces in $BACK. The loops are launch-bound: shards
#      side by side on the one GPU run faster.
#   setsid nohup bash benchmarks/agent_choose_gpu_job.sh > /tmp/alogs/job.log 2>&1 &
# GPUS="0 1 2" spreads the work over those cards of one host: stages 1-2 on the first, variant i's agent stage on
# card i (mod the count; PARALLEL then defaults to the count), the loops' shards round-robin over them.
# TRAIN_GPUS=N (with GPUS naming at least N cards): every stage trains data parallel on the first N cards (plain DDP,
# launch/accelerate/multi_gpu.yaml: bf16 autocast; the one-card path runs without), the same global batches (per-device
# batch of stages 1-2 and the agent's accumulation divided by N), the variants' agent stages one after another.
# Another base: QCONF=benchmarks/configs/quality-qwen15.yaml GGUF_IN=qwen15.gguf (the file's name in $IN; it is
# linked where QCONF's model.name says).
# A variant trained otherwise on another variant's data: VARIANT_DATA_<V>=<W> (V uses qdata_W.tar.xz; W=main:
# qdata.tar.xz) and VARIANT_SETS_<V>="key=value ..." (more --set for V's agent stage), e.g. VARIANTS="ids idsfit"
# VARIANT_DATA_idsfit=ids VARIANT_SETS_idsfit="stages.agent.long_examples=fit".
# Runs (benchmarks/results/quality.md):
#   - 2026-11-27 (1), one H100: the names stage's eight validation loops (plain, block) beside the params stage's
#     training filled the GPU (100 %, 78 GB): training 1.7x slower, loops cut. The params stage was stopped, and
#     the rest done by hand as the script would: names plain vs block on validation (81 of 89 finished), plain's test.
#   - 2026-11-27 (2), one H100, VAL_TIME_LIMIT=170: chain 1:57 + 3:00, both agent stages side by side in 5:50; the
#     session's device time ran out during the validation loops (with 8 loops on the card, 4-5 of 22 requests per
#     shard were done after 2 minutes: give them VAL_TIME_LIMIT 300 and the test 480).
#   - 2026-11-27 (3), 4 x H200, GPUS="0 1 2" VARIANTS="main params recovery" VAL_SHARDS=6 LOOPS=3 VAL_TIME_LIMIT=240
#     TEST_SHARDS=9 TEST_TIME_LIMIT=420 (add_tools_gpu_job.sh on GPU 3): inputs 1.5 min, chain 4 min, three agent
#     stages 4.5 min, validation 5 min, test 6 min: 22 min in all.
#   - 2026-11-28 (ninth), 4 x H100, GPUS="0 1 2 3" TRAIN_GPUS=4 VARIANTS="ids idsfit" VARIANT_DATA_idsfit=ids
#     VARIANT_SETS_idsfit="stages.agent.long_examples=fit" with the 1.5B: inputs 3.6 min (22 pieces of 52 MiB), chain
#     4.2 min, two agent stages 6.3 min, validation 6 min, test 7.8 min: 28 min in all (75 s of the session's
#     30 device minutes were left).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
IN=${IN:-/tmp/in} RUN=${RUN_DIR:-/tmp/arun} LOGS=${LOGS:-/tmp/alogs} RES=${RES:-/tmp/ares} BACK=${BACK:-/tmp/aback}
VAL_TL=${VAL_TIME_LIMIT:-300} TEST_TL=${TEST_TIME_LIMIT:-480} VAL_SHARDS=${VAL_SHARDS:-4}
TEST_SHARDS=${TEST_SHARDS:-6} BUDGET=${CONTEXT_BUDGET:-8192} SETTINGS=${SETTINGS:-plain}
IFS=', ' read -ra GPU <<< "${GPUS:-0}"   # the cards ("0 1 2" or "0,1,2"); GPU[0] trains stages 1-2
read -ra ALL_V <<< "${VARIANTS:-main params}"; read -ra ALL_B <<< "$SETTINGS"; LOOPS=${LOOPS:-2}
TRAIN_GPUS=${TRAIN_GPUS:-1}
case "$TRAIN_GPUS" in 1|2|4) ;; *) echo "TRAIN_GPUS=$TRAIN_GPUS: 1, 2 or 4" >&2; exit 2 ;; esac
[ "$TRAIN_GPUS" -le "${#GPU[@]}" ] || { echo "TRAIN_GPUS=$TRAIN_GPUS: more than the cards in GPUS" >&2; exit 2; }
PARALLEL=${PARALLEL:-$(( ${#GPU[@]} > 1 ? ${#GPU[@]} : 2 ))}
[ "$TRAIN_GPUS" = 1 ] || PARALLEL=1   # data-parallel stages take all their cards (and accelerate's one port)
QCONF=${QCONF:-benchmarks/configs/quality-qwen05.yaml} GGUF_IN=${GGUF_IN:-qwen05.gguf}
QGGUF=$(sed -n 's/^  name: gguf-file://p' "$QCONF")   # where the config looks for the GGUF file
[ -n "$QGGUF" ] || { echo "$QCONF: no model.name gguf-file:PATH" >&2; exit 2; }
FAST=(--set train.packing=true --set model.attn_implementation=varlen)
STAGE_SETS=(--set stages.memorization.per_device_batch_size=$((128 / TRAIN_GPUS))
            --set stages.retrieval.per_device_batch_size=$((128 / TRAIN_GPUS))
            --set stages.agent.max_length=8192 --set stages.agent.per_device_batch_size=2
            --set stages.agent.gradient_accumulation_steps=$((4 / TRAIN_GPUS)))
LAUNCH=(--num_processes 1)
[ "$TRAIN_GPUS" -gt 1 ] && LAUNCH=(--config_file launch/accelerate/multi_gpu.yaml --num_processes "$TRAIN_GPUS")
EAGER=(--set train.packing=false --set model.attn_implementation=eager)
mkdir -p "$LOGS" "$RES"
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels
folder() { python3 -m toolgen.config folder "$1"; }
card() { echo "${GPU[$(( $1 % ${#GPU[@]} ))]}"; }   # N -> the N-th card, round-robin
train() {   # OUT DATA STAGE LOG [train.py args]: one stage on card $ON (default the first), skipped when finished
  local out=$1 data=$2 s=$3 log=$4; shift 4
  [ -f "$out/$(folder "$s")/stage.json" ] && return 0
  local cards=${ON:-${GPU[0]}}
  [ "$TRAIN_GPUS" -gt 1 ] && cards=$(IFS=,; echo "${GPU[*]:0:$TRAIN_GPUS}")
  CUDA_VISIBLE_DEVICES=$cards python3 -m accelerate.commands.launch "${LAUNCH[@]}" toolgen/train.py --config "$QCONF" \
    --stage "$s" --output-dir "$out" --data-dir "$data" "${STAGE_SETS[@]}" "$@" >> "$LOGS/$log.log" 2>&1
}
e2e() {   # VARIANT SPLIT SOURCE NAME [more toolgen.evaluate flags]: one loop of that variant's agent stage, on $ON
  local v=$1 split=$2 source=$3 name=$4; shift 4
  CUDA_VISIBLE_DEVICES=${ON:-${GPU[0]}} python3 -m toolgen.evaluate --model "$RUN/$v/$(folder agent)" --data "$RUN/data_$v" \
    --out "$RES/$name" --e2e-only --no-base --e2e-width 0 --e2e-source "$source" --e2e-split "$split" \
    --e2e-context-budget "$BUDGET" "$@" > "$LOGS/$name.log" 2>&1 || say "e2e $name failed (exit $?)"
}
cfb() {   # VARIANT SPLIT NAME SHARDS TIME_LIMIT [flags]: ComplexFuncBench in SHARDS processes, merged into $RES/NAME;
  # shard k on card $FIRST + k (round-robin)
  local v=$1 split=$2 name=$3 n=$4 tl=$5 pids=(); shift 5
  for ((k = 0; k < n; k++)); do
    ON=$(card $(( ${FIRST:-0} + k ))) e2e "$v" "$split" complexfuncbench "${name}_$k" --e2e-time-limit "$tl" --e2e-shard "$k/$n" "$@" & pids+=($!)
  done
  wait "${pids[@]}"
  local shards=(); for ((k = 0; k < n; k++)); do shards+=("$RES/${name}_$k"); done
  python3 -m toolgen.e2e_merge --data "$RUN/data_$v" --out "$RES/$name" --e2e-split "$split" "${shards[@]}" \
    > "$LOGS/merge_$name.log" 2>&1 || say "merge $name failed"
}
pack() {   # what came of the run, also when it stops early: $RES.tgz
  for v in main "${ALL_V[@]}"; do   # what each stage trained on (stage.json, metrics.json: losses, cut tokens)
    for d in "$RUN/$v"/*/; do
      [ -d "$d" ] && [ ! -L "${d%/}" ] || continue
      mkdir -p "$RES/stages/$v"
      for f in stage.json metrics.json; do cp "$d$f" "$RES/stages/$v/$(basename "$d").$f" 2>/dev/null || true; done
    done
  done
  rm -rf "$RES/logs"; cp -r "$LOGS" "$RES/logs"
  # loops still writing (a job stopped early) make tar warn and exit 1: what it packed is still worth having
  tar --warning=no-file-changed -czf "$RES.tgz.tmp" -C "$(dirname "$RES")" "$(basename "$RES")" || say "pack: tar exit $?"
  mv "$RES.tgz.tmp" "$RES.tgz"
}
back() {   # STAGE_DIR NAME: the stage folder to bring back, in pieces under a returned file's 16 MiB: $BACK/NAME.tgz.NN
  mkdir -p "$BACK"; tar czf - -C "$(dirname "$1")" "$(basename "$1")" | split -b 15M -d - "$BACK/$2.tgz."
}
trap pack EXIT
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
install_wheels
data_of() { local d="VARIANT_DATA_$1"; echo "${!d:-$1}"; }   # the variant whose prepared folder V trains on
for v in main "${ALL_V[@]}"; do   # the prepared folder of each variant: $RUN/data_V (main's trains stages 1-2 in any case)
  [ -d "$RUN/data_$v" ] && continue
  w=$(data_of "$v")
  if [ "$w" != "$v" ]; then   # another variant's folder (its own name, so that the loops and the packing find it)
    [ -d "$RUN/data_$w" ] || { say "VARIANT_DATA_$v=$w: $w is not in main or VARIANTS before $v"; exit 2; }
    ln -sfn "data_$w" "$RUN/data_$v"; continue
  fi
  f=$IN/qdata.tar.xz; [ "$v" = main ] || f=$IN/qdata_$v.tar.xz
  waitfor "$f"; mkdir -p "$RUN/x_$v"; tar xJf "$f" -C "$RUN/x_$v"; mv "$RUN/x_$v/data" "$RUN/data_$v"
done
waitfor "$IN/$GGUF_IN"; mkdir -p models; ln -sfn "$IN/$GGUF_IN" "$QGGUF"
python3 -c "from toolgen import models; print(models.resolve_model('gguf-file:$QGGUF'))"
say "qwen ready"
RETR=$RUN/main/$(folder retrieval)
[ "${RETRIEVAL_IN:-0}" = 1 ] && waitfor "$IN/retrieval_training.tgz"   # it is on its way: do not train stages 1-2
if [ -f "$IN/retrieval_training.tgz" ]; then   # an earlier run's stage 2 (BACK below): stages 1-2 not trained again
  mkdir -p "$RUN/main"; tar xzf "$IN/retrieval_training.tgz" -C "$RUN/main"; say "retrieval stage brought in"
fi
if [ ! -f "$RETR/stage.json" ]; then
  for s in memorization retrieval; do
    if ! train "$RUN/main" "$RUN/data_main" "$s" "train_$s" "${FAST[@]}"; then
      say "$s failed on varlen (log: train_$s.log); again with eager attention on padded rows"
      train "$RUN/main" "$RUN/data_main" "$s" "train_$s" "${EAGER[@]}"
    fi
    say "$s trained"
  done
  back "$RETR" retrieval_training
fi
# The agent stages side by side (one alone kept the GPU a third busy), then every validation loop at once: loops
# beside a training stage slowed both (run 1).
running=() i=0
for v in "${ALL_V[@]}"; do
  parent=(); [ "$v" = main ] || parent=(--parent "$RETR")
  sets_of="VARIANT_SETS_$v"; for kv in ${!sets_of:-}; do parent+=(--set "$kv"); done
  ON=$(card $i) train "$RUN/$v" "$RUN/data_$v" agent "train_agent_$v" "${FAST[@]}" ${parent[@]+"${parent[@]}"} & running+=($!); i=$((i + 1))
  if [ "${#running[@]}" -ge "$PARALLEL" ]; then   # the oldest first (stages of one size end in about that order)
    wait "${running[0]}" || say "an agent stage failed"; running=("${running[@]:1}")
  fi
done
for p in ${running[@]+"${running[@]}"}; do wait "$p" || say "an agent stage failed"; done
say "agent stages trained"
pids=() i=0   # at most LOOPS runs (of VAL_SHARDS processes each) at once: 8 processes beside training filled 78 GB
CHOOSE=1; [ $(( ${#ALL_V[@]} * ${#ALL_B[@]} )) -gt 1 ] || { CHOOSE=0; say "one variant, one setting: nothing to choose"; }
for v in "${ALL_V[@]}"; do
  [ "$CHOOSE" = 1 ] || break
  for b in "${ALL_B[@]}"; do
    flags=(); [ "$b" = block ] && flags=(--e2e-block-repeats)
    FIRST=$((i * VAL_SHARDS)) cfb "$v" val "val_${v}_$b" "$VAL_SHARDS" "$VAL_TL" ${flags[@]+"${flags[@]}"} & pids+=($!); i=$((i + 1))
    if [ "${#pids[@]}" -ge "$LOOPS" ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  done
done
for p in ${pids[@]+"${pids[@]}"}; do wait "$p"; done
say "validation loops done"
runs=()   # the choice: benchmarks/e2e_choose.py, every run scored on the requests all of them finished
for v in "${ALL_V[@]}"; do
  [ "$CHOOSE" = 1 ] || break
  for b in "${ALL_B[@]}"; do
    f=$RES/val_${v}_$b/transcripts/toolgen_agent_tuning_complexfuncbench_val.json
    if [ -f "$f" ]; then runs+=("$v:$b=$f"); else say "no validation transcripts for $v $b"; fi
  done
done
if [ "${#runs[@]}" -gt 0 ] && PYTHONPATH=$PYTHONPATH:$PWD python3 benchmarks/e2e_choose.py --data "$RUN/data_main" \
    --split val --json "$RES/choice.json" "${runs[@]}" | tee "$LOGS/choice.md"; then
  IFS=: read -r V B < <(python3 -c "import json; print(json.load(open('$RES/choice.json'))['chosen'])")
else   # nothing to compare: the test runs the first variant as shipped, and says so
  V=${ALL_V[0]} B=${ALL_B[0]}; say "no choice on validation: testing $V $B"
fi
[ "$CHOOSE" = 1 ] && say "chosen on validation: $V $B" || say "testing $V $B (nothing was chosen)"
back "$RUN/$V/$(folder agent)" "agent_$V" &
FLAGS=(); [ "$B" = block ] && FLAGS=(--e2e-block-repeats)
cfb "$V" test test_cfb "$TEST_SHARDS" "$TEST_TL" ${FLAGS[@]+"${FLAGS[@]}"} &
ON=$(card "$TEST_SHARDS") e2e "$V" test nestful test_nestful --e2e-time-limit "$TEST_TL" ${FLAGS[@]+"${FLAGS[@]}"} &
CUDA_VISIBLE_DEVICES=$(card $((TEST_SHARDS + 1))) python3 -m toolgen.evaluate --config "$QCONF" --no-e2e --no-base --no-baselines \
  --set retrieval.prior=none --set stages.agent.max_length=8192 --model "$RUN/$V/$(folder agent)" \
  --data "$RUN/data_$V" --out "$RES/test_stepwise" \
  > "$LOGS/test_stepwise.log" 2>&1 || say "step-wise evaluation failed" &
wait
say "end"
