#!/usr/bin/env bash
# The real result: SmolLM2-135M-Instruct (CONFIG to change) on ToolBench/StableToolBench (../shared/toolbench or
# TOOLBENCH=DIR) + ComplexFuncBench + NESTFUL (the nestful-wrapper package's data), against BM25 and MiniLM.
#   bash benchmarks/quality.sh                      # every part, ending with benchmarks/results/quality.{json,md}
#   PARTS="prepare" bash benchmarks/quality.sh      # some parts, e.g. training on a GPU host, evaluation elsewhere
#   NPROC=2 ...                                     # stages on 2 GPUs of one host (data parallel)
#   WRITER=gguf-file:models/....gguf ...            # main also gets the llm view, written by that instruct model
#                                                   # (needs a GPU); WRITER_CACHE=FILE: from a query_writer.jsonl
#   VAL_FRACTION=0.2 ...                            # the share of training queries carved out for validation
#   AGENT_VAL_FRACTION=0.1 ...                      # the agent sources' share (agent_e2e_val.json)
#   INPUT_DOC=params ...                            # the arguments turn also shows each parameter's type, allowed
#                                                   # values and description (toolgen-prepare --input-doc; default names)
#   RECOVERY_SHARE=0.3 ...                          # that share of the agent sources' trajectories gets a failed
#                                                   # call, its error and the call done right (--recovery-share)
#   OBSERVATION_BUDGET=4000 ...                     # characters of a recorded response in the agent data and
#                                                   # the replay loop (--observation-budget; default 2000)
#   OBSERVATION_ORDER=ids-first ...                 # what fills that budget first (--observation-order)
#   TRAIN_SETS="stages.agent.max_length=8192 train.packing=true model.attn_implementation=varlen" ...
#                                                   # config overrides for main's stages (train.py --set)
# Parts (a part keeps what an earlier run of it finished: delete $RUN to start over):
#   prepare     data (views name,ask,params,multi_tool,multi_category, + llm with WRITER or WRITER_CACHE, + the agent
#               sources) and data_views_base (views name,ask: the earlier best), with the llm view also
#               data_views_nollm (the five without it); each with the same validation split carved from the training
#               queries (seed 0)
#   train       main: memorization -> retrieval -> agent on data
#   views       views_base (and views_nollm with the llm view): retrieval on data_views_*, from main's memorization,
#               and its evaluation (the views ablation; waits for main's memorization when another process trains it)
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
LLM=${WRITER:-${WRITER_CACHE:-}}   # non-empty: main's views include the llm view
VIEWS=${VIEWS-views_base${LLM:+ views_nollm}}   # VIEWS="" skips the ablation (e.g. a second base model)
FIVE=name,ask,params,multi_tool,multi_category
part() { [[ " $PARTS " == *" $1 "* ]]; }
Q=$S/stabletoolbench/solvable_queries/test_instruction
prepare() {
  $PY -m toolgen.prepare --api-catalog "$S/derived/api_docs_from_test_queries.jsonl" \
    --queries "$Q/G1_instruction.json" --queries "$Q/G1_category.json" --queries "$Q/G2_instruction.json" \
    --queries "$Q/G2_category.json" --trajectories "$S/toolbench/toolbench/tooleval/results/default_evalset" \
    --trajectories "$S/toolbench/data_example/answer" --trajectories "$S/stabletoolbench/data_example/answer" \
    --complexfuncbench --nestful --val-fraction "${VAL_FRACTION:-0.2}" \
    --agent-val-fraction "${AGENT_VAL_FRACTION:-0.1}" --input-doc "${INPUT_DOC:-names}" \
    --recovery-share "${RECOVERY_SHARE:-0}" --observation-budget "${OBSERVATION_BUDGET:-2000}" \
    --observation-order "${OBSERVATION_ORDER:-document}" "$@"
}
WRITER_FLAGS=()
[ -z "${WRITER:-}" ] || WRITER_FLAGS+=(--query-writer "$WRITER" --writer-batch-size "${WRITER_BATCH:-16}")
[ -z "${WRITER_CACHE:-}" ] || WRITER_FLAGS+=(--query-writer-cache "$WRITER_CACHE")
# stage RUN DATA STAGE [train.py args]: one stage, skipped when finished
stage() {
  local run=$1 data=$2 s=$3; shift 3
  [ -f "$RUN/$run/$($PY -m toolgen.config folder "$s")/stage.json" ] && return 0
  local multi=(); [ "$NPROC" -gt 1 ] && multi=(--multi_gpu)
  $PY -m accelerate.commands.launch "${multi[@]}" --num_processes "$NPROC" toolgen/train.py --config "$CONFIG" --stage "$s" \
    --output-dir "$RUN/$run" --data-dir "$RUN/$data" "$@"
}
if part prepare; then
  [ -f "$RUN/data/tool_tokens.json" ] || prepare --out "$RUN/data" --views "$FIVE${LLM:+,llm}" "${WRITER_FLAGS[@]}"
  [[ " $VIEWS " != *" views_base "* ]] || [ -f "$RUN/data_views_base/tool_tokens.json" ] ||
    prepare --out "$RUN/data_views_base" --views name,ask
  [[ " $VIEWS " != *" views_nollm "* ]] || [ -f "$RUN/data_views_nollm/tool_tokens.json" ] ||
    prepare --out "$RUN/data_views_nollm" --views "$FIVE"
fi
if part train; then
  read -ra train_sets <<< "${TRAIN_SETS:-}"
  sets=(); for x in ${train_sets[@]+"${train_sets[@]}"}; do sets+=(--set "$x"); done
  for s in $($PY -m toolgen.config stages); do stage main data "$s" ${sets[@]+"${sets[@]}"}; done
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
if part e2e; then   # one process per loop, side by side on the GPU (the loop is launch-bound on small models)
  # E2E: which loops (default all three): agent = the agent stage, with a +prior row that ranks for its fusion;
  # retrieval = the stage-2 model (--e2e-only); base = the untrained base told its tools (--e2e-only, from stage 1's
  # folder, so it can start once stage 1 is done). E2E_LIMIT: the first N held-out requests per source (0: all;
  # BASE_LIMIT for base); E2E_WIDTH: requests run at once, their model calls batched; E2E_PRIOR=0: no +prior row;
  # E2E_TIME_LIMIT: seconds per source and loop, then the finished requests are scored and the rest counted as cut.
  # Unset: toolgen.evaluate's own defaults.
  limit=${E2E_LIMIT:-0} pids=()
  folder() { echo "$RUN/main/$($PY -m toolgen.config folder "$1")"; }
  for what in ${E2E:-agent retrieval base}; do
    flags=(--data "$RUN/data" --out "$RUN/eval_e2e_$what" ${E2E_WIDTH:+--e2e-width "$E2E_WIDTH"}
           ${E2E_TIME_LIMIT:+--e2e-time-limit "$E2E_TIME_LIMIT"})
    case $what in
      agent) if [ "${E2E_PRIOR:-1}" = 1 ]; then flags+=(--no-baselines --set retrieval.prior=bm25)
             else flags+=(--e2e-only); fi
             flags+=(--no-base --e2e-limit "$limit" --model "$(folder agent)") ;;
      retrieval) flags+=(--e2e-only --no-base --e2e-limit "$limit" --model "$(folder retrieval)") ;;
      base) flags+=(--e2e-only --base-only --e2e-limit "${BASE_LIMIT:-$limit}" --model "$(folder memorization)") ;;
      *) echo "quality: E2E has an unknown loop '$what' (agent, retrieval, base)" >&2; exit 2 ;;
    esac
    $PY -m toolgen.evaluate "${flags[@]}" > "$RUN/eval_e2e_$what.log" 2>&1 &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
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
  for w in agent retrieval base; do   # the loops that ran (E2E)
    [ ! -f "$RUN/eval_e2e_$w/metrics.json" ] || runs+=(--e2e "$RUN/eval_e2e_$w/metrics.json")
  done
  $PY benchmarks/quality_report.py --main "$RUN/eval_main/metrics.json" "${runs[@]}" \
    --prepare "$RUN/data/prepare_report.json" --config "$CONFIG"
fi
echo "quality: done ($PARTS)"
