#!/usr/bin/env bash
# Scale-out runs on the GPUs of this machine (Llama-3.2-1B shape, see benchmarks/configs/scaleout-llama1b.yaml):
# one GPU bf16 LoRA; one GPU 4-bit QLoRA; with 2+ GPUs: DDP, DeepSpeed ZeRO-2 and ZeRO-3 on the same global batch
# (2 x 4 = 1 x 8, so the first-step loss must match one GPU's), and ZeRO-2 with 8 per GPU for tokens/s.
#   bash benchmarks/scaleout.sh && python3 benchmarks/scaleout_report.py scaleout_run
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN_DIR:-scaleout_run}
CONFIG=${CONFIG:-benchmarks/configs/scaleout-llama1b.yaml}
NGPU=$(python3 -c 'import torch; print(torch.cuda.device_count())')
python3 -m toolgen.prepare --out "$RUN/data" >/dev/null
run() {   # run NAME ACCELERATE_CONFIG PROCESSES [--set ...]
  local name=$1 acc=$2 n=$3; shift 3
  echo "== $name ($acc, $n process(es))"
  local mp=()
  if [[ "$acc" == *deepspeed* ]]; then mp=(--mixed_precision bf16); fi   # the DS JSON's bf16 "auto" follows this flag
  python3 -m accelerate.commands.launch --config_file "$acc" --num_processes "$n" ${mp[@]+"${mp[@]}"} toolgen/train.py --config "$CONFIG" \
    --stage memorization --data-dir "$RUN/data" --output-dir "$RUN/$name" "$@" 2>&1 | grep -E "^\[memorization\]|Error|error" || true
}
if [ "${SKIP_1GPU:-0}" != 1 ]; then
  run 1gpu_bf16 launch/accelerate/1gpu.yaml 1
  run 1gpu_qlora_4bit launch/accelerate/1gpu.yaml 1 --set model.quantization=4bit
fi
if [ "$NGPU" -ge 2 ]; then
  run 2gpu_ddp launch/accelerate/multi_gpu.yaml 2 --set stages.memorization.per_device_batch_size=4
  run 2gpu_zero2 launch/accelerate/deepspeed_zero2.yaml 2 --set stages.memorization.per_device_batch_size=4
  run 2gpu_zero3 launch/accelerate/deepspeed_zero3.yaml 2 --set stages.memorization.per_device_batch_size=4
  run 2gpu_zero2_b8 launch/accelerate/deepspeed_zero2.yaml 2
fi
