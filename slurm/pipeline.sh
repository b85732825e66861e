#!/usr/bin/env bash
#SBATCH --job-name=toolgen-submit
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# Submit the ToolGen chain to Slurm: memorization -> retrieval -> agent -> eval, one job each. A job starts only if the
# one before succeeded (--dependency=afterok + --kill-on-invalid-dep=yes: a failed stage cancels the rest, which then
# never run). The first job also prepares the data if it is missing.
#   bash slurm/pipeline.sh --config launch/configs/llama-3.2-1b.yaml --nodes 2 --gpus-per-node 4 --partition gpu
#   bash slurm/pipeline.sh --stages retrieval,agent,eval ...     # start from stage 2 (stage 1's output must exist)
#   bash slurm/pipeline.sh --dry-run ...                         # print the sbatch commands, submit nothing
# Options: --config FILE, --output-dir DIR, --nodes N, --gpus-per-node G (0 = CPU), --partition P, --time T,
#   --account A, --cpus-per-task C, --stages LIST, --accelerate-config FILE, --dry-run; after `--`: train.py arguments.
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
[ -f slurm/stage.sbatch ] || cd "$(dirname "$0")/.."
CONFIG=launch/configs/smollm2-135m.yaml OUT=finetuned_toolgen_model NODES=1 GPN=0 STAGES=memorization,retrieval,agent,eval
PARTITION="" TIME="" ACCOUNT="" CPUS="" ACC="" DRY=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;       --output-dir) OUT=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;         --gpus-per-node) GPN=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;; --time) TIME=$2; shift 2 ;;
    --account) ACCOUNT=$2; shift 2 ;;     --cpus-per-task) CPUS=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;       --accelerate-config) ACC=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;            --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '6,16p' "$0"; exit 0 ;;
    *) echo "slurm/pipeline.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
ROOT=$(pwd)
[ "$DRY" = 1 ] || mkdir -p "$OUT/logs"
declare -A PARENT=([retrieval]=tool_memorization [agent]=retrieval_training)
first=${STAGES%%,*}
if [ -n "${PARENT[$first]:-}" ] && [ ! -f "$OUT/${PARENT[$first]}/stage.json" ] && [ "$DRY" = 0 ]; then
  echo "slurm/pipeline.sh: --stages starts at $first, but $OUT/${PARENT[$first]} is missing or incomplete" >&2; exit 1
fi
prev=""
for stage in ${STAGES//,/ }; do
  case "$stage" in memorization|retrieval|agent|eval) ;; *) echo "unknown stage $stage" >&2; exit 2 ;; esac
  args=(--parsable --job-name "toolgen-$stage" --output "$OUT/logs/%x-%j.out")
  if [ "$stage" = eval ]; then args+=(--nodes 1); else args+=(--nodes "$NODES"); fi
  if [ "$GPN" -gt 0 ]; then args+=(--gpus-per-node "$([ "$stage" = eval ] && echo 1 || echo "$GPN")"); fi
  [ -n "$PARTITION" ] && args+=(--partition "$PARTITION")
  [ -n "$TIME" ] && args+=(--time "$TIME")
  [ -n "$ACCOUNT" ] && args+=(--account "$ACCOUNT")
  [ -n "$CPUS" ] && args+=(--cpus-per-task "$CPUS")
  [ -n "$prev" ] && args+=(--dependency "afterok:$prev" --kill-on-invalid-dep=yes)
  export_vars="ALL,TOOLGEN_STAGE=$stage,TOOLGEN_CONFIG=$CONFIG,TOOLGEN_OUTPUT_DIR=$OUT,TOOLGEN_ROOT=$ROOT,TOOLGEN_GPUS_PER_NODE=$GPN"
  [ -n "$ACC" ] && export_vars+=",TOOLGEN_ACCELERATE_CONFIG=$ACC"
  args+=(--export "$export_vars" slurm/stage.sbatch ${EXTRA[@]+"${EXTRA[@]}"})
  if [ "$DRY" = 1 ]; then
    echo "sbatch ${args[*]}"
    prev="<$stage-job-id>"
  else
    prev=$(sbatch "${args[@]}")
    prev=${prev%%;*}
    echo "submitted $stage: job $prev, log $OUT/logs/toolgen-$stage-$prev.out"
  fi
done
[ "$DRY" = 1 ] || echo "watch: squeue -u \$USER; tensorboard --logdir $OUT/runs"
