#!/usr/bin/env bash
# The whole pipeline on one machine: prepare the data, the training stages of toolgen/config.py (each one
# `accelerate launch`), evaluate.
#   bash launch/pipeline.sh --config launch/configs/smollm2-135m.yaml [--output-dir finetuned_toolgen_model]
#        [--accelerate-config launch/accelerate/1gpu.yaml] [--stages memorization,retrieval,agent] [--no-eval]
#        [--data-dir DIR (prepared stage files; default: prepare into DIR/data)] [--set KEY=VALUE ...] [--dry-run]
#        [--resume (continue each stage from its newest checkpoint) | --overwrite (train finished stages again)]
#        [--new-catalog NEW.jsonl [--new-queries FILE ...] [--new-trajectories PATH ...] [--replace-docs]
#         [--new-query-writer-cache FILE]]
# A stage outside the chain (`python -m toolgen.config stages --all`: add_tools) runs only when --stages names it: new
# tools (--new-catalog) into the finished stage its table entry names, DIR/<its folder> + DIR/<its folder>.data,
# evaluated into DIR/eval_<its folder> (toolgen/add_tools.py; README: Adding tools to a trained model).
# Stops at the first failing step. Output: DIR/data, DIR/{tool_memorization,retrieval_training,agent_tuning},
# DIR/runs (TensorBoard: tensorboard --logdir DIR/runs), DIR/eval/metrics.{json,md}.
# Relative paths are relative to the directory this is run from (a config shipped in the repository is found from
# anywhere). Python: $PYTHON, else python3 on PATH. --dry-run prints the commands, shell-quoted, and runs nothing.
set -euo pipefail
ME=launch/pipeline.sh
CALLER=$PWD
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/launch/common.sh"

CONFIG=launch/configs/smollm2-135m.yaml OUT=finetuned_toolgen_model ACC_CONFIG="" STAGES=""
EVAL=1 OVERRIDES=() DATA="" DRY=0 RUN_FLAGS=() NEW_ARGS=() NEW_CATALOG=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --output-dir) OUT=$2; shift 2 ;;
    --accelerate-config) ACC_CONFIG=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --no-eval) EVAL=0; shift ;;
    --data-dir) DATA=$2; shift 2 ;;
    --set) OVERRIDES+=(--set "$2"); shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --resume|--overwrite) RUN_FLAGS+=("$1"); shift ;;
    --new-catalog) NEW_CATALOG=$(caller_path "$2"); shift 2 ;;
    --new-queries) NEW_ARGS+=(--queries "$(caller_path "$2")"); shift 2 ;;
    --new-trajectories) NEW_ARGS+=(--trajectories "$(caller_path "$2")"); shift 2 ;;
    --new-query-writer-cache) NEW_ARGS+=(--query-writer-cache "$(caller_path "$2")"); shift 2 ;;
    --replace-docs) NEW_ARGS+=(--replace-docs); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
CONFIG=$(shipped_path "$CONFIG")
OUT=$(caller_path "$OUT")
[ -z "$DATA" ] || DATA=$(caller_path "$DATA")
[ -z "$ACC_CONFIG" ] || ACC_CONFIG=$(shipped_path "$ACC_CONFIG")
cd "$ROOT"
resolve_python
check_config "$CONFIG"
[ -n "$STAGES" ] || STAGES=$("$PY" -m toolgen.config stages | tr ' ' ,)
IFS=, read -ra STAGE_LIST <<< "$STAGES"
CHAIN=" $("$PY" -m toolgen.config stages) "
for stage in "${STAGE_LIST[@]}"; do
  [[ "$CHAIN" == *" $stage "* ]] || [ -n "$NEW_CATALOG" ] \
    || die "--stages $stage adds tools: give --new-catalog; nothing started"
done
check_stages "$OUT" "" "${STAGE_LIST[@]}"

# One step: its title and the command, or with --dry-run only the command, shell-quoted so that the lines can be
# pasted (from the repository: the first line goes there).
step() {
  local title=$1; shift
  if [ "$DRY" = 1 ]; then quote "$@"; else echo "== $title"; "$@"; fi
}
[ "$DRY" = 0 ] || quote cd "$ROOT"

if [ -z "$ACC_CONFIG" ]; then   # one GPU if there is one, else the CPU
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    ACC_CONFIG=launch/accelerate/1gpu.yaml
  else
    ACC_CONFIG=launch/accelerate/cpu.yaml
  fi
fi
if [ -z "$DATA" ]; then   # no --data-dir: the config's data.dir, else prepare DIR/data from data.toolbench (or the sample)
  DATA=$("$PY" -m toolgen.config data-dir "$CONFIG" "$OUT")
  if [ "$DATA" = "$OUT/data" ]; then
    step "prepare -> $DATA" "$PY" -m toolgen.prepare --config "$CONFIG" --out "$DATA"
  fi
fi
# On one CPU process accelerate picks the threads itself and prints a notice at every launch: pass its own choice.
THREADS=()
if [ "$(basename "$ACC_CONFIG")" = cpu.yaml ]; then
  THREADS=(--num_cpu_threads_per_process "$("$PY" -c 'import psutil; print(psutil.cpu_count(logical=False) or 1)')")
fi
ADDED=()   # the additions' folders, evaluated with their own data (the whole catalog)
for stage in "${STAGE_LIST[@]}"; do
  data=$DATA
  if [[ "$CHAIN" != *" $stage "* ]]; then   # new tools into the parent's finished folder: their data first
    folder=$OUT/$("$PY" -m toolgen.config folder "$stage") data=$OUT/$("$PY" -m toolgen.config folder "$stage").data
    step "data of $stage -> $data" "$PY" -m toolgen.add_tools --prepare-only --config "$CONFIG" \
      --model "$OUT/$("$PY" -m toolgen.config folder "$("$PY" -m toolgen.config parent "$stage")")" \
      --api-catalog "$NEW_CATALOG" ${NEW_ARGS[@]+"${NEW_ARGS[@]}"} --out "$folder" --data-out "$data" \
      ${OVERRIDES[@]+"${OVERRIDES[@]}"}
    ADDED+=("$folder")
  fi
  step "stage $stage ($ACC_CONFIG)" "$PY" -m accelerate.commands.launch --config_file "$ACC_CONFIG" \
    ${THREADS[@]+"${THREADS[@]}"} toolgen/train.py --config "$CONFIG" --stage "$stage" --output-dir "$OUT" \
    --data-dir "$data" ${OVERRIDES[@]+"${OVERRIDES[@]}"} ${RUN_FLAGS[@]+"${RUN_FLAGS[@]}"}
done
if [ "$EVAL" = 1 ]; then
  step "evaluate -> $OUT/eval" "$PY" -m toolgen.evaluate --output-dir "$OUT" --data "$DATA"
  for folder in ${ADDED[@]+"${ADDED[@]}"}; do
    step "evaluate -> $OUT/eval_$(basename "$folder")" "$PY" -m toolgen.evaluate --model "$folder" \
      --data "$folder.data" --out "$OUT/eval_$(basename "$folder")"
  done
fi
[ "$DRY" = 1 ] || echo "== done: $OUT"
