#!/usr/bin/env bash
# How benchmarks/results/throughput.* are made on a lent multi-GPU host with no network:
#   IN=DIR RUN=/tmp/tp setsid nohup bash benchmarks/throughput_gpu_job.sh > /tmp/tp.log 2>&1 &
#   python3 benchmarks/throughput_report.py /tmp/tp        # when it has finished (or to read what has)
#   tar czf $OUT/tp.tgz -C /tmp/tp run.json results.jsonl data/lengths.json   # back as one file (a call returns 8)
# IN holds wheels.tar (the wheels of ../shared/gpu-wheels: deepspeed, bitsandbytes, liger-kernel, datasets and their
# small dependencies). The run: `ours` (the reference config as shipped, bf16 LoRA), the plain and the tuned-eager
# Trainer, three interleaved repeats each; once each, the compiled tuned Trainer (`tuned`: SDPA since flex attention
# did not finish), `ours` with 4-bit QLoRA and two variants that say what the
# reference config's switches buy — no compilation (ours-uncompiled) and the loop as the run before measured it
# (ours-padded: no autocast, left-padded batches, SDPA, no compilation); then the scaling jobs (DDP, ZeRO-2, ZeRO-3
# on every GPU). As it ran on 4 x H200 (benchmarks/results/throughput.md), the reference config did not compile yet:
# `ours` there is ours-uncompiled here, and the compiled loop was the variant ours-compiled, repeated by a second
# command (--repeat-from 2) into the same folder.
# TIMEOUT (default 360 s) stops a job: a compiled one spends 95-135 s compiling.
# Before it, a check that FlashAttention varlen (toolgen/attention.py) gives one causal SDPA per example on this card.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
IN=${IN:-/tmp/in} RUN=${RUN:-/tmp/tp}
source benchmarks/gpu_job_inputs.sh   # say, waitfor, install_wheels
say "start on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l)"
install_wheels
mkdir -p "$RUN"
python3 - > "$RUN/varlen_check.txt" 2>&1 <<'EOF' || say "varlen check failed: $(tail -n 3 "$RUN/varlen_check.txt")"
import torch
from toolgen import attention
attention.register()
torch.manual_seed(0)
lengths = [700, 33, 1200, 5, 310]
q = torch.randn(sum(lengths), 32, 64, device="cuda", dtype=torch.bfloat16)
k, v = (torch.randn(sum(lengths), 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
b = attention.boundaries(lengths)
flash = attention._flash(q, k, v, b["cu_seq_lens_q"].cuda(), b["max_length_q"], 64 ** -0.5)
ref = attention._per_example(q.float(), k.float(), v.float(), b["cu_seq_lens_q"], 64 ** -0.5)
print("varlen_attn calls:", {k: v for k, v in attention._FLASH.items() if k != "fn"})
print("max |flash - per-example sdpa (fp32)|:", (flash.float() - ref).abs().max().item())
EOF
say "$(cat "$RUN/varlen_check.txt" | tail -n 2 | tr '\n' ' ')"
python3 benchmarks/throughput.py --out "$RUN" --timeout "${TIMEOUT:-360}" --repeats 3 \
  --variant ours-uncompiled=train.compile=false \
  --variant ours-padded=amp=no,train.packing=false,model.attn_implementation=sdpa,train.compile=false \
  --systems ours plain tuned-eager tuned ours-qlora ours-uncompiled ours-padded \
  --once tuned ours-qlora ours-uncompiled ours-padded ${SCALING:+--scaling "$SCALING"}
say "done"
