#!/usr/bin/env bash
# The real result: SmolLM2-135M-Instruct (CONFIG to change) on ToolBench/StableToolBench (../shared/toolbench or
# TOOLBENCH=DIR) + ComplexFuncBench + NESTFUL (the nestful-wrapper package's data), against BM25 and MiniLM.
#   bash benchmarks/quality.sh                      # every part, ending with benchmarks/results/quality.{json,md}
#   PARTS="prepare" bash benchmarks/quality.sh      # some parts, e.g. training on a GPU host, evaluation elsewhere
#   NPROC=2 ...                                     # stages on 2 GPUs of one host (data parallel)
#   WRITER=gguf-file:models/....gguf ...            # also the llm view, written by that instruct model (needs a GPU)
# Parts (a part keeps what an earlier run of it finished: delete $RUN to start over):
#   prepare     data (views name,ask,params,multi_tool,multi_category + the agent sources) and data_views_base (views
#               name,ask: the earlier best), both with a validation split carved from the training queries (seed 0);
#               with WRITER, data_views_llm: data's views + llm (the writer's answers cached in that folder)
#   train       main: memorization -> retrieval -> agent on data
#   views       views_base (and views_llm with WRITER): retrieval on data_views_*, from main's memorization, and its
#               evaluation (the views ablation; waits for main's memorization when another process is training it)
#   e2e         the agent loop end to end on held-out ComplexFuncBench / NESTFUL requests (replayed responses):
#               main's retrieval and agent stages, the untrained base told its tools; the prior from BM25 only
#               (E2E_LIMIT requests per source; default all)
#   evaluate    retrieval, memorization, step-wise agent metrics, baselines, hybrid rows (no e2e: see e2e)
#   report      benchmarks/results/quality.{json,md}
set -euo pipefail
cd "$(dirname "$0")/.."
S=${TOOLBENCH:-../shared/toolbench}
RUN=${RUN_DIR:-quality_run}
CONFIG=${CONFIG:-benchmarks/configs/quality-smollm2.yaml}
PY=${PYTHON:-python3}
PARTS=${PARTS:-"prepare train views e2e evaluate report"}
NPROC=${NPROC:-1}
VIEWS=${VIEWS-views_base${WRITER:+ views_llm}}   # VIEWS="" skips the ablation (e.g. a second base model)
part() { [[ " $PARTS " == *" $1 "* ]]; }
Q=$S/stabletoolbench/solvable_queries/test_instruction
prepare() {
  $PY -m toolgen.prepare --api-catalog "$S/derived/api_docs_from_test_queries.jsonl" \
    --queries "$Q/G1_instruction.json" --queries "$Q/G1_category.json" --queries "$Q/G2_instruction.json" \
    --queries "$Q/G2_category.json" --trajectories "$S/toolbench/toolbench/tooleval/results/default_evalset" \
    --trajectories "$S/toolbench/data_example/answer" --trajectories "$S/stabletoolbench/data_example/answer" \
    --complexfuncbench --nestful --val-fraction 0.1 "$@"
}
# stage RUN DATA STAGE [train.py args]: one stage, skipped when finished
stage() {
  local run=$1 data=$2 s=$3; shift 3
  [ -f "$RUN/$run/$($PY -m toolgen.config folder "$s")/stage.json" ] && return 0
  local multi=(); [ "$NPROC" -gt 1 ] && multi=(--multi_gpu)
  $PY -m accelerate.commands.launch "${multi[@]}" --num_processes "$NPROC" toolgen/train.py --config "$CONFIG" --stage "$s" \
    --output-dir "$RUN/$run" --data-dir "$RUN/$data" "$@"
}
if part prepare; then
  [ -f "$RUN/data/tool_tokens.json" ] || prepare --out "$RUN/data" --views name,ask,params,multi_tool,multi_category
  [ -f "$RUN/data_views_base/tool_tokens.json" ] || prepare --out "$RUN/data_views_base" --views name,ask
  [ -z "${WRITER:-}" ] || [ -f "$RUN/data_views_llm/tool_tokens.json" ] || prepare --out "$RUN/data_views_llm" \
    --views name,ask,params,multi_tool,multi_category,llm --query-writer "$WRITER" --writer-batch-size "${WRITER_BATCH:-16}"
fi
if part train; then
  for s in $($PY -m toolgen.config stages); do stage main data "$s"; done
fi
if part views; then
  memo=$($PY -m toolgen.config folder memorization) retr=$($PY -m toolgen.config folder retrieval)
  for v in $VIEWS; do
    mkdir -p "$RUN/$v"
    [ -e "$RUN/$v/$memo" ] || ln -s "../main/$memo" "$RUN/$v/$memo"   # the same stage 1
    until [ -f "$RUN/main/$memo/stage.json" ]; do sleep 10; done
    stage "$v" "data_$v" retrieval
    [ -f "$RUN/eval_$v/metrics.json" ] || $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --no-baselines \
      --model "$RUN/$v/$retr" --data "$RUN/data_$v" --out "$RUN/eval_$v"
  done
fi
if part e2e; then   # three processes share the GPU: the loop is launch-bound on a 135M model (the agent stage's
  # process also ranks, for its +prior row's fusion; the other two only run the loop: --e2e-only)
  limit=${E2E_LIMIT:-0}   # 0: every held-out request (the loops run batched: --e2e-width)
  retrieval=$RUN/main/$($PY -m toolgen.config folder retrieval) agent=$RUN/main/$($PY -m toolgen.config folder agent)
  $PY -m toolgen.evaluate --no-baselines --no-base --set retrieval.prior=bm25 --e2e-limit "$limit" --model "$agent" \
    --data "$RUN/data" --out "$RUN/eval_e2e_agent" > "$RUN/eval_e2e_agent.log" 2>&1 &
  $PY -m toolgen.evaluate --e2e-only --no-base --e2e-limit "$limit" \
    --model "$retrieval" --data "$RUN/data" --out "$RUN/eval_e2e_retrieval" > "$RUN/eval_e2e_retrieval.log" 2>&1 &
  $PY -m toolgen.evaluate --e2e-only --base-only --e2e-limit "$limit" --model "$agent" --data "$RUN/data" \
    --out "$RUN/eval_e2e_base" > "$RUN/eval_e2e_base.log" 2>&1 &
  failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  tail -n 3 "$RUN"/eval_e2e_*.log
  [ "$failed" = 0 ] || { echo "quality: an e2e evaluation failed (logs: $RUN/eval_e2e_*.log)" >&2; exit 1; }
fi
if part evaluate; then
  stages=()
  for s in $($PY -m toolgen.config stages); do stages+=(--model "$RUN/main/$($PY -m toolgen.config folder "$s")"); done
  $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e "${stages[@]}" --data "$RUN/data" --out "$RUN/eval_main" \
    --runs "$RUN/main/runs"
fi
if part report; then
  runs=(); for v in $VIEWS; do runs+=(--run "$v=$RUN/eval_$v/metrics.json"); done
  $PY benchmarks/quality_report.py --main "$RUN/eval_main/metrics.json" "${runs[@]}" \
    --e2e "$RUN/eval_e2e_agent/metrics.json" --e2e "$RUN/eval_e2e_retrieval/metrics.json" \
    --e2e "$RUN/eval_e2e_base/metrics.json" --prepare "$RUN/data/prepare_report.json" --config "$CONFIG"
fi
echo "quality: done ($PARTS)"
