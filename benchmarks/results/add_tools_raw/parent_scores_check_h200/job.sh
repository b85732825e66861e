#!/bin/bash
# parent_scores on a GPU (bf16, the loop's defaults there): the tiny model on the shipped sample through add_tools.sh's
# split, chain, retrain and a parent-scores sweep candidate (trained, attached and evaluated on cuda), then the old
# tools' distribution on cuda: spliced against the parent's
python3 benchmarks/stream_pieces.py join --pieces .xfer/b2 --stream /tmp/stream.bin --to /tmp/in | tail -1
export IN=/tmp/in PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false JAX_PLATFORMS=cpu \
  XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
source benchmarks/gpu_job_inputs.sh; install_wheels 2>&1 | tail -1
S=toolgen/data/sample
SECONDS=0
timeout 200 env CATALOG=$S/catalog.jsonl QUERIES="$S/instruction/G1_query.json $S/instruction/G2_query.json" \
  TRAJECTORIES=$S/answer CONFIG=benchmarks/results/add_tools_raw/parent_scores_check_h200/gpucheck.yaml RUN_DIR=/tmp/gc RESULTS=/tmp/gc/result UNTIL=retrieval \
  CANDIDATES="0.3:1e-2:new_rows_lora:2:1e-3:0:1:parent:align" PARTS="split train80 full sweep" \
  bash benchmarks/add_tools.sh > /tmp/gc.log 2>&1; echo "add_tools.sh rc=$? in ${SECONDS}s"
grep -a "^\[memo\|^\[retr\|^\[add\|rror\|Trace\|^chosen" /tmp/gc.log | tail -12
timeout 60 python3 - <<'PY'
import glob, json, torch
from toolgen import decoding, models, parent_scores
parent, stage = "/tmp/gc/m80/retrieval_training", glob.glob("/tmp/gc/m80/sweep_*/")[0]
print("stage.json parent_scores:", json.load(open(stage + "stage.json")).get("parent_scores"))
prompts = [ex["messages"][:-1] for ex in json.load(open("/tmp/gc/data80/retrieval_training.json"))[:64]]
old = json.load(open(parent + "/tool_tokens.json"))
def lp(d, attach):
    tok, m, _ = models.load_stage(d)
    m.to("cuda").eval()
    if attach:
        assert parent_scores.attach(m, d)
    models.merge_for_inference(m)
    x = decoding.next_token_logprobs(m, tok, prompts)
    return torch.log_softmax(x[:, tok.convert_tokens_to_ids(old)].float(), -1)
a, b, c = lp(parent, False), lp(stage, True), lp(stage, False)
print("old tools, spliced vs parent: max |diff| %.4g; own vs parent: %.4g" % ((b - a).abs().max(), (c - a).abs().max()))
print("top-1 agree spliced/parent: %.3f, own/parent: %.3f" % ((b.argmax(-1) == a.argmax(-1)).float().mean(),
                                                             (c.argmax(-1) == a.argmax(-1)).float().mean()))
PY
nvidia-smi --query-gpu=name --format=csv,noheader
