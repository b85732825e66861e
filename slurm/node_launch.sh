#!/usr/bin/env bash
# One node's `accelerate launch` for a stage. stage.sbatch runs it through srun, once per node, so everything here —
# the machine rank above all — is evaluated ON that node (expanding $SLURM_NODEID once on the batch host is the classic
# bug that makes every node rank 0).
#   bash slurm/node_launch.sh [--print] -- <train.py arguments>
# Reads: SLURM_NNODES, SLURM_NODEID, TOOLGEN_MAIN_ADDR, TOOLGEN_MAIN_PORT, TOOLGEN_GPUS_PER_NODE (0 = CPU),
#        TOOLGEN_ACCELERATE_CONFIG (default chosen from nodes x GPUs), TOOLGEN_PYTHON (the interpreter that submitted
#        the chain, default python3: the node's PATH may lead to a Python without our packages).
set -euo pipefail
PRINT=0
if [ "${1:-}" = --print ]; then PRINT=1; shift; fi
if [ "${1:-}" = -- ]; then shift; fi
NNODES=${SLURM_NNODES:-1}
RANK=${SLURM_NODEID:-0}
GPN=${TOOLGEN_GPUS_PER_NODE:-0}
ADDR=${TOOLGEN_MAIN_ADDR:?TOOLGEN_MAIN_ADDR is set by stage.sbatch}
PORT=${TOOLGEN_MAIN_PORT:-29500}
PROCS=$(( NNODES * (GPN > 0 ? GPN : 1) ))
PY=${TOOLGEN_PYTHON:-python3}
ACC=${TOOLGEN_ACCELERATE_CONFIG:-}
if [ -z "$ACC" ]; then
  if [ "$GPN" -eq 0 ]; then ACC=launch/accelerate/cpu.yaml
  elif [ "$NNODES" -gt 1 ]; then ACC=launch/accelerate/multi_node.yaml      # DeepSpeed ZeRO-2, standard launcher
  elif [ "$GPN" -gt 1 ]; then ACC=launch/accelerate/deepspeed_zero2.yaml
  else ACC=launch/accelerate/1gpu.yaml; fi
fi
cmd=("$PY" -m accelerate.commands.launch --config_file "$ACC" --num_machines "$NNODES" --num_processes "$PROCS"
     --machine_rank "$RANK" --main_process_ip "$ADDR" --main_process_port "$PORT" toolgen/train.py "$@")
if [ "$PRINT" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
