#!/usr/bin/env bash
# The whole pipeline on one machine: prepare the data, the three stages (each one `accelerate launch`), evaluate.
#   bash launch/pipeline.sh --config launch/configs/smollm2-135m.yaml [--output-dir finetuned_toolgen_model]
#        [--accelerate-config launch/accelerate/1gpu.yaml] [--stages memorization,retrieval,agent] [--no-eval]
#        [--data-dir DIR (prepared stage files; default: prepare into DIR/data)] [--set KEY=VALUE ...]
# Stops at the first failing step. Output: DIR/data, DIR/{tool_memorization,retrieval_training,agent_tuning},
# DIR/runs (TensorBoard: tensorboard --logdir DIR/runs), DIR/eval/metrics.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=launch/configs/smollm2-135m.yaml OUT=finetuned_toolgen_model ACC_CONFIG="" STAGES=memorization,retrieval,agent
EVAL=1 OVERRIDES=() DATA=""
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --output-dir) OUT=$2; shift 2 ;;
    --accelerate-config) ACC_CONFIG=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;
    --no-eval) EVAL=0; shift ;;
    --data-dir) DATA=$2; shift 2 ;;
    --set) OVERRIDES+=(--set "$2"); shift 2 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "pipeline.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ -z "$ACC_CONFIG" ]; then   # one GPU if there is one, else the CPU
  if $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then ACC_CONFIG=launch/accelerate/1gpu.yaml
  else ACC_CONFIG=launch/accelerate/cpu.yaml; fi
fi
if [ -z "$DATA" ]; then   # no --data-dir: the config's data.dir, else prepare DIR/data from data.toolbench (or the sample)
  DATA=$($PY -m toolgen.config data-dir "$CONFIG" "$OUT")
  if [ "$DATA" = "$OUT/data" ]; then
    echo "== prepare -> $DATA"
    $PY -m toolgen.prepare --config "$CONFIG" --out "$DATA"
  fi
fi
for stage in ${STAGES//,/ }; do
  echo "== stage $stage ($ACC_CONFIG)"
  $PY -m accelerate.commands.launch --config_file "$ACC_CONFIG" toolgen/train.py --config "$CONFIG" --stage "$stage" \
    --output-dir "$OUT" --data-dir "$DATA" ${OVERRIDES[@]+"${OVERRIDES[@]}"}
done
if [ "$EVAL" = 1 ]; then
  echo "== evaluate -> $OUT/eval"
  $PY -m toolgen.evaluate --output-dir "$OUT" --data "$DATA"
fi
echo "== done: $OUT"
