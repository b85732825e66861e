#!/bin/bash
# Issue 13, 2026-11-28: validation with new-only queries (VAL_FRACTION=0.25: 11 new-only, 83 old-only on the real
# split) and a sweep over the KL dial (distill_new_tools at weights 1 and 0.3) and weight aligning (align). Call 1:
# a copy of the checkout to run from, piece 00, the job in the background.
mkdir -p /tmp/repo && tar --exclude=./.xfer -cf - . | tar xf - -C /tmp/repo
python3 .xfer/b/meta/stream_pieces.py join --pieces .xfer/b --stream /tmp/stream.bin --to /tmp/in | tail -2
cd /tmp/repo && grep -c align_new_rows toolgen/models.py
(setsid nohup env CUDA_VISIBLE_DEVICES=0 RUN_DIR=/tmp/addrun RESULTS=/tmp/aresults/add_tools VAL_FRACTION=0.25 \
  CANDIDATES="0.3:1e-2:new_rows_lora:2:1e-3:5:4 0.3:1e-2:new_rows_lora:2:1e-3:5:4:align \
0.3:1e-2:new_rows_lora:2:1e-3:1:4:new 0.3:1e-2:new_rows_lora:2:1e-3:0.3:4:new" \
  bash benchmarks/add_tools_gpu_job.sh > /tmp/ajob.log 2>&1 < /dev/null &)
sleep 3; nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; ls -la /tmp/in; tail -3 /tmp/ajob.log
