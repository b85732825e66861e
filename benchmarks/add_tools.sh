#!/usr/bin/env bash
# Adding tools vs retraining, on one GPU: the real catalog's tools split 80/20 by tool (seeded); the chain trained on
# the 80 % part; the 20 % added with toolgen-add-tools; the same chain trained from scratch on 100 %. Held-out queries
# whose relevant APIs are all new (all old) score the new (old) tools, model alone and with the prior.
#   bash benchmarks/add_tools.sh            # -> benchmarks/results/add_tools.{json,md}
#   PARTS="split train80" bash benchmarks/add_tools.sh   # some parts (a part keeps what an earlier run finished)
# Parts: split (catalog and query files cut in two) | train80 (prepare + the chain on 80 %) | full (prepare + the
#   chain on 100 %, timed) | sweep (CANDIDATES, e.g. "0.3:1e-3 0.7:3e-4:new_rows:1 0.5:1e-2:new_rows_lora::1e-4
#   0.5:1e-3:all:2::5 0.5:1e-2:new_rows_lora:1:1e-3:5:4:new:align": replay_fraction:learning_rate[:add_tools.train
#   [:epochs[:lora_learning_rate[:distill_weight[:lora_layers[:flags: new = add_tools.distill_new_tools, align =
#   add_tools.align_new_rows, parent = add_tools.parent_scores]]]]]] (benchmarks/add_tools_report.py flags), each
#   added (timed) and scored on the validation split;
#   the best of those within TIME_SHARE (0.25) of the full retrain's seconds is used by add; nothing without
#   CANDIDATES) | add (toolgen-add-tools, timed) | evaluate (before, after, full; baselines on the full catalog) |
#   report. Delete $RUN (default add_tools_run) to start over.
# Inputs: ../shared/toolbench or TOOLBENCH=DIR (StableToolBench queries, the derived catalog, ToolBench trajectories);
# CATALOG, QUERIES (space-separated), TRAJECTORIES (space-separated) override them, CONFIG the training config,
# UNTIL the last chain stage trained and added to (default agent), NEW_SHARE (0.2) and SEED (0) the split,
# VAL_FRACTION (0.25) the validation share of every prepared folder's non-test queries (the sweep's score reads the
# new-only ones among them: 11 at 0.25 on the real split, 1 at quality.sh's 0.1; both chains train on the rest), RESULTS
# the results' path without extension (default benchmarks/results/add_tools). WRITER_CACHE=FILE (a query_writer.jsonl
# that answers for every API of the catalog, e.g. the quality run's): the llm view everywhere — both chains' stage 2
# and the addition (add_tools.views + --query-writer-cache) — so that the new tools get requests worded as users word
# them, and the retrain the same.
# A CPU smoke run on the shipped sample and the tiny model (minutes; numbers meaningless):
#   S=toolgen/data/sample CATALOG=$S/catalog.jsonl QUERIES="$S/instruction/G1_query.json $S/instruction/G2_query.json" \
#   TRAJECTORIES=$S/answer CONFIG=launch/configs/tiny.yaml RUN_DIR=/tmp/add_smoke RESULTS=/tmp/add_smoke/result \
#   UNTIL=retrieval CANDIDATES="0.3:5e-3 0.6:2e-3" bash benchmarks/add_tools.sh
set -euo pipefail
cd "$(dirname "$0")/.."
S=${TOOLBENCH:-../shared/toolbench}
RUN=${RUN_DIR:-add_tools_run}
CONFIG=${CONFIG:-benchmarks/configs/add-tools-smollm2.yaml}
PY=${PYTHON:-python3}
UNTIL=${UNTIL:-agent}
PARTS=${PARTS:-"split train80 full sweep add evaluate report"}
read -ra CANDIDATES <<< "${CANDIDATES:-}"
Q=$S/stabletoolbench/solvable_queries/test_instruction
CATALOG=${CATALOG:-$S/derived/api_docs_from_test_queries.jsonl}
read -ra QUERIES <<< "${QUERIES:-$Q/G1_instruction.json $Q/G1_category.json $Q/G2_instruction.json $Q/G2_category.json}"
read -ra TRAJECTORIES <<< "${TRAJECTORIES:-$S/toolbench/toolbench/tooleval/results/default_evalset \
$S/toolbench/data_example/answer $S/stabletoolbench/data_example/answer}"
part() { [[ " $PARTS " == *" $1 "* ]]; }
now() { date +%s.%N; }
# the chain up to UNTIL (the stage table's order) and the folder tools are added to
CHAIN=()
for s in $($PY -m toolgen.config stages); do CHAIN+=("$s"); [ "$s" = "$UNTIL" ] && break; done
[ "${CHAIN[-1]}" = "$UNTIL" ] || { echo "add_tools.sh: UNTIL=$UNTIL is not a chain stage" >&2; exit 2; }
FOLDER=$($PY -m toolgen.config folder "$UNTIL")
TRAJ_FLAGS=()
for t in "${TRAJECTORIES[@]}"; do TRAJ_FLAGS+=(--trajectories "$t"); done
NEW_QUERIES=() OLD_QUERIES=() ALL_QUERIES=()
for q in "${QUERIES[@]}"; do
  ALL_QUERIES+=(--queries "$q")
  NEW_QUERIES+=(--queries "$RUN/split/new_queries/$(basename "$q")")
  OLD_QUERIES+=(--queries "$RUN/split/old_queries/$(basename "$q")")
done
# prepare OUT_DIR CATALOG QUERY_FLAGS...: the stage files as quality.sh makes them (views, validation split)
VIEWS=name,ask,params,multi_tool,multi_category
WRITER=()
[ -z "${WRITER_CACHE:-}" ] || { VIEWS=$VIEWS,llm; WRITER=(--query-writer-cache "$WRITER_CACHE"); }
prepare() {
  local out=$1 catalog=$2; shift 2
  $PY -m toolgen.prepare --api-catalog "$catalog" "$@" "${TRAJ_FLAGS[@]}" --val-fraction "${VAL_FRACTION:-0.25}" \
    --views "$VIEWS" ${WRITER[@]+"${WRITER[@]}"} --out "$out"
}
# chain RUN_SUBDIR DATA: the stages up to UNTIL, one process each, skipped when finished
chain() {
  for s in "${CHAIN[@]}"; do
    [ -f "$RUN/$1/$($PY -m toolgen.config folder "$s")/stage.json" ] && continue
    $PY -m accelerate.commands.launch --num_processes 1 toolgen/train.py --config "$CONFIG" --stage "$s" \
      --output-dir "$RUN/$1" --data-dir "$2"
  done
}
# timed NAME COMMAND...: wall seconds (start-up, data and model loading included) into $RUN/seconds_NAME
timed() {
  local name=$1 t0; shift
  t0=$(now)
  "$@"
  $PY -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$t0" "$(now)" > "$RUN/seconds_$name"
}

mkdir -p "$RUN"
if part split && [ ! -f "$RUN/split/split.json" ]; then
  $PY benchmarks/add_tools_report.py split --catalog "$CATALOG" --queries "${QUERIES[@]}" --out "$RUN/split" \
    --new-share "${NEW_SHARE:-0.2}" --seed "${SEED:-0}"
fi
if part train80; then
  [ -f "$RUN/data80/tool_tokens.json" ] || prepare "$RUN/data80" "$RUN/split/old.jsonl" "${OLD_QUERIES[@]}"
  chain m80 "$RUN/data80"
fi
add_traj=()
[ "$UNTIL" = "$($PY -m toolgen.config stages | awk '{print $NF}')" ] && add_traj=("${TRAJ_FLAGS[@]}")
# add OUT [--set ...]: the new tools into the 80 % model
add() {
  local out=$1; shift
  $PY -m toolgen.add_tools --model "$RUN/m80/$FOLDER" --api-catalog "$RUN/split/new.jsonl" "${NEW_QUERIES[@]}" \
    ${add_traj[@]+"${add_traj[@]}"} ${WRITER[@]+"${WRITER[@]}" --set "add_tools.views=$VIEWS"} \
    --config "$CONFIG" --out "$out" --overwrite "$@"
}
if part full && [ ! -f "$RUN/m100/$FOLDER/stage.json" ]; then
  full() {
    cat "$RUN/split/old.jsonl" "$RUN/split/new.jsonl" > "$RUN/split/full.jsonl"
    prepare "$RUN/data100" "$RUN/split/full.jsonl" "${ALL_QUERIES[@]}"
    chain m100 "$RUN/data100"
  }
  rm -rf "$RUN/data100" "$RUN/m100"   # the whole retrain is timed, from its data
  timed full_retrain full
fi
# sweep: each CANDIDATE (add_tools_report.py's CANDIDATE_FORMAT: FIELDS, then the flags new and align; epochs is the
# time the addition may take) added (timed) and scored on the
# validation split (the parent's held-out validation queries and the new queries' own, cut into new-only and
# old-only); the best one within the time target (full runs first: its seconds are the budget) is the timed addition's
if part sweep && [ ${#CANDIDATES[@]} -gt 0 ] && [ ! -f "$RUN/chosen.json" ]; then
  for cand in "${CANDIDATES[@]}"; do
    folder="sweep_${cand//:/_}"
    flags=$($PY benchmarks/add_tools_report.py flags --candidate "$cand")   # a bad candidate stops here
    read -ra sets <<< "$flags"
    [ -f "$RUN/m80/$folder/stage.json" ] || timed "$folder" add "$RUN/m80/$folder" "${sets[@]}"
    [ -f "$RUN/valsets/val_new.json" ] || $PY benchmarks/add_tools_report.py testsets --data "$RUN/m80/$folder.data" \
      --split "$RUN/split" --out "$RUN/valsets" --file retrieval_val.json --prefix val
    $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --no-baselines --model "$RUN/m80/$folder" \
      --data "$RUN/m80/$folder.data" --queries "$RUN/valsets/val_new.json" --queries "$RUN/valsets/val_old.json" \
      --out "$RUN/eval_$folder"
  done
  # the parent on the same old-only validation queries: the forgetting each candidate shows (chosen.json)
  $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --no-baselines --model "$RUN/m80/$FOLDER" \
    --data "$RUN/data80" --queries "$RUN/valsets/val_old.json" --out "$RUN/eval_sweep_parent"
  $PY benchmarks/add_tools_report.py choose --run "$RUN" --candidates "${CANDIDATES[@]}" --time-share "${TIME_SHARE:-0.25}"
fi
if part add && [ ! -f "$RUN/m80/added/stage.json" ]; then
  # the sweep's pick (none without a sweep); a plain assignment, so that a failure stops the script: inside the
  # here-string below it would pass unseen, and the addition would run with the config's values
  flags=$($PY benchmarks/add_tools_report.py chosen-flags --run "$RUN")
  read -ra chosen <<< "$flags"
  timed add add "$RUN/m80/added" ${chosen[@]+"${chosen[@]}"}
fi
if part evaluate; then
  $PY benchmarks/add_tools_report.py testsets --data "$RUN/data100" --split "$RUN/split" --out "$RUN/testsets"
  sets=(--queries "$RUN/testsets/test_new.json" --queries "$RUN/testsets/test_old.json")
  # before: the 80 % model on its own catalog (its prior indexes that catalog), on the old tools' queries
  $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --no-baselines --model "$RUN/m80/$FOLDER" \
    --data "$RUN/data80" --queries "$RUN/testsets/test_old.json" --out "$RUN/eval_before"
  $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --no-baselines --model "$RUN/m80/added" \
    --data "$RUN/m80/added.data" "${sets[@]}" --out "$RUN/eval_added"
  $PY -m toolgen.evaluate --config "$CONFIG" --no-e2e --no-base --model "$RUN/m100/$FOLDER" --data "$RUN/data100" \
    "${sets[@]}" --out "$RUN/eval_full"
fi
if part report; then
  card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n1 || true)
  $PY benchmarks/add_tools_report.py report --run "$RUN" --stage "$FOLDER" --card "${card:-cpu}" --config "$CONFIG" \
    ${RESULTS:+--out "$RESULTS"}
fi
echo "add_tools: done ($PARTS)"
