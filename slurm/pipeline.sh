#!/usr/bin/env bash
#SBATCH --job-name=toolgen-submit
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=00:05:00
# Submit the ToolGen chain to Slurm: the training stages of toolgen/config.py (memorization -> retrieval -> agent),
# then eval, one job each. A job starts only if the one before succeeded (--dependency=afterok +
# --kill-on-invalid-dep=yes: a failed stage cancels the rest, which then never run). The first job also prepares the
# data if it is missing.
#   bash slurm/pipeline.sh --config launch/configs/llama-3.2-1b.yaml --nodes 2 --gpus-per-node 4 --partition gpu
#   bash slurm/pipeline.sh --stages retrieval,agent,eval ...     # start from stage 2 (stage 1's output must exist)
#   bash slurm/pipeline.sh --dry-run ...                         # print the sbatch commands (pasteable), submit nothing
# Options: --config FILE, --output-dir DIR, --nodes N, --gpus-per-node G (0 = CPU), --partition P, --time T,
#   --account A, --cpus-per-task C, --stages LIST, --accelerate-config FILE, --dry-run; after `--`: train.py arguments.
#   A stage outside the chain (`python -m toolgen.config stages --all`: add_tools) runs only when --stages names it:
#   --new-catalog FILE [--new-queries FILE ...] [--new-trajectories PATH ...] [--replace-docs]
#   [--new-query-writer-cache FILE] (toolgen-add-tools).
# Relative paths are relative to the directory this is run from (a config shipped in the repository is found from
# anywhere). The jobs run the Python that runs this script ($PYTHON, else python3 on PATH), by its absolute path.
set -euo pipefail
ME=slurm/pipeline.sh
CALLER=$PWD
ROOT=$(cd "$(dirname "$0")/.." && pwd)
# Submitted itself with sbatch, this script runs as a copy in Slurm's spool: the repository is then where it was
# submitted from.
[ -f "$ROOT/slurm/stage.sbatch" ] || ROOT=${SLURM_SUBMIT_DIR:?$ME: cannot find the repository}
source "$ROOT/launch/common.sh"

CONFIG=launch/configs/smollm2-135m.yaml OUT=finetuned_toolgen_model NODES=1 GPN=0 STAGES=""
PARTITION="" TIME="" ACCOUNT="" CPUS="" ACC="" DRY=0 EXTRA=() NEW=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;       --output-dir) OUT=$2; shift 2 ;;
    --nodes) NODES=$2; shift 2 ;;         --gpus-per-node) GPN=$2; shift 2 ;;
    --partition) PARTITION=$2; shift 2 ;; --time) TIME=$2; shift 2 ;;
    --account) ACCOUNT=$2; shift 2 ;;     --cpus-per-task) CPUS=$2; shift 2 ;;
    --stages) STAGES=$2; shift 2 ;;       --accelerate-config) ACC=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;            --) shift; EXTRA=("$@"); break ;;
    --new-catalog|--new-queries|--new-trajectories|--new-query-writer-cache) NEW+=("$1" "$(caller_path "$2")"); shift 2 ;;
    --replace-docs) NEW+=("$1"); shift ;;
    -h|--help) sed -n '6,19p' "$0"; exit 0 ;;
    *) die "unknown option $1" ;;
  esac
done
CONFIG=$(shipped_path "$CONFIG")
OUT=$(caller_path "$OUT")
[ -z "$ACC" ] || ACC=$(shipped_path "$ACC")
cd "$ROOT"
resolve_python

# Everything is checked before the first sbatch: a bad config, a typo in --stages or a missing parent stage would
# otherwise show only when a job starts, after hours in the queue, or after earlier stages were submitted.
check_config "$CONFIG"
[ -z "$ACC" ] || [ -f "$ACC" ] || die "no accelerate config at $ACC: nothing submitted"
# A backslash in sbatch --output turns off its %x/%j patterns: every stage would write the same log file.
[[ "$OUT" != *\\* ]] || die "the output dir contains a backslash, which Slurm's log file names cannot take: $OUT"
[ -n "$STAGES" ] || STAGES="$("$PY" -m toolgen.config stages | tr ' ' ,),eval"
IFS=, read -ra STAGE_LIST <<< "$STAGES"
CHAIN=" $("$PY" -m toolgen.config stages) eval "
for stage in "${STAGE_LIST[@]}"; do
  [[ "$CHAIN" == *" $stage "* ]] || [[ " ${NEW[*]-} " == *" --new-catalog "* ]] \
    || die "--stages $stage adds tools: give --new-catalog; nothing submitted"
done
check_stages "$OUT" eval "${STAGE_LIST[@]}"

if [ "$DRY" = 1 ]; then
  echo "# dry run, nothing submitted; pasted, these lines submit the chain (job_<stage> holds each job id)"
else
  mkdir -p "$OUT/logs"
fi
prev=""
for stage in "${STAGE_LIST[@]}"; do
  # sbatch options. The job runs in the repository (--chdir); `%` is doubled in the log path: Slurm reads %x, %j.
  opts=(--parsable --job-name "toolgen-$stage" --chdir "$ROOT" --output "${OUT//%/%%}/logs/%x-%j.out")
  if [ "$stage" = eval ]; then opts+=(--nodes 1); else opts+=(--nodes "$NODES"); fi
  if [ "$GPN" -gt 0 ]; then opts+=(--gpus-per-node "$([ "$stage" = eval ] && echo 1 || echo "$GPN")"); fi
  [ -n "$PARTITION" ] && opts+=(--partition "$PARTITION")
  [ -n "$TIME" ] && opts+=(--time "$TIME")
  [ -n "$ACCOUNT" ] && opts+=(--account "$ACCOUNT")
  [ -n "$CPUS" ] && opts+=(--cpus-per-task "$CPUS")
  # The job's values travel as arguments of stage.sbatch, never as `sbatch --export` values: --export cuts a value at
  # its commas, and the job would write to the path cut there.
  job=("$ROOT/slurm/stage.sbatch" --stage "$stage" --config "$CONFIG" --output-dir "$OUT" --python "$PY"
       --gpus-per-node "$GPN")
  [ -n "$ACC" ] && job+=(--accelerate-config "$ACC")
  [[ "$CHAIN" == *" $stage "* ]] || job+=(${NEW[@]+"${NEW[@]}"})   # only an addition reads the new tools
  job+=(-- ${EXTRA[@]+"${EXTRA[@]}"})
  # sbatch --parsable prints "id" or "id;cluster"; the next job depends on the id. A dry run prints lines that keep it
  # in job_<stage>, so that pasted they submit the chain.
  if [ "$DRY" = 1 ]; then
    dep=""
    [ -n "$prev" ] && dep=" --dependency \"afterok:\${job_$prev%%;*}\" --kill-on-invalid-dep=yes"
    echo "job_$stage=\$(sbatch $(quote "${opts[@]}")$dep $(quote "${job[@]}"))"
    prev=$stage
  else
    dep=()
    [ -n "$prev" ] && dep=(--dependency "afterok:$prev" --kill-on-invalid-dep=yes)
    prev=$(sbatch "${opts[@]}" ${dep[@]+"${dep[@]}"} "${job[@]}")
    prev=${prev%%;*}
    echo "submitted $stage: job $prev, log $OUT/logs/toolgen-$stage-$prev.out"
  fi
done
[ "$DRY" = 1 ] || echo "watch: squeue -u \$USER; tensorboard --logdir $(quote "$OUT/runs")"
