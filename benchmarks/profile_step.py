"""Profile the training loop's own update (toolgen.step.update on the loop's model, optimizer and batches, built by
toolgen.train.build) on one stage shape with torch.profiler, to see where an update's time goes.

    python benchmarks/profile_step.py --stage retrieval [--set train.compile=false ...]      # GPU: random Llama-3.2-1B
    python benchmarks/profile_step.py --stage retrieval --tiny                                # CPU: checks the script
    accelerate launch --config_file launch/accelerate/multi_gpu.yaml --num_processes 4 benchmarks/profile_step.py \
        --stage agent --set stages.agent.gradient_accumulation_steps=2                   # DDP: process 0's tables

The data are benchmarks/stage_shapes.py's synthetic stage files (the shapes benchmarks/throughput.py times); the first
--warmup updates run unprofiled (compilation, autotuning), the next --updates are profiled.
"""

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import stage_shapes  # noqa: E402
from toolgen import train  # noqa: E402
from toolgen.config import load_config  # noqa: E402
from toolgen.step import update  # noqa: E402


def updates(loader, ga):
    """The loop's grouping: `ga` micro-batches per update, in the loader's order, epoch after epoch."""
    while True:
        group = []
        for batch in loader:
            group.append(batch)
            if len(group) == ga:
                yield group
                group = []


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="retrieval", choices=list(stage_shapes.SHAPES))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timed", type=int, default=5, help="updates timed unprofiled after the warmup (s/update)")
    p.add_argument("--updates", type=int, default=4)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    model = "tiny" if args.tiny else "random:llama-3.2-1b"
    config = "launch/configs/tiny.yaml" if args.tiny else "launch/configs/llama-3.2-1b.yaml"
    out = tempfile.mkdtemp(prefix="toolgen-profile-")
    stage_shapes.write(os.path.join(out, "data"), model, [64, 64, 16], n_tools=100 if args.tiny else
                       stage_shapes.TOOL_TOKENS)
    argv = ["--stage", args.stage, "--config", config, "--data-dir", os.path.join(out, "data"), "--output-dir", out,
            "--from-scratch", "--set", f"model.name={model}"] + [x for o in args.overrides for x in ("--set", o)]
    targs = train.parse_args(argv)
    cfg = load_config(targs.config, targs.overrides)
    sc = cfg.stages[args.stage]
    accelerator, tokenizer, net, optimizer, loader, params, _, loss_fn = train.build(
        targs, cfg, sc, None, os.path.join(out, "data"), os.path.join(out, "checkpoints"))
    groups = updates(loader, sc.gradient_accumulation_steps)
    net.train()

    def step():
        update(accelerator, net, optimizer, next(groups), len(tokenizer), params, cfg.train.max_grad_norm, loss_fn)
    for _ in range(args.warmup):
        step()
    cuda = accelerator.device.type == "cuda"
    t0 = time.perf_counter()   # update() ends in a host sync (its loss and gradient norm): no other sync needed
    for _ in range(args.timed):
        step()
    seconds = (time.perf_counter() - t0) / max(args.timed, 1)
    accelerator.print(f"[profile] {args.timed} updates unprofiled: {seconds:.4f} s/update on "
                      f"{accelerator.num_processes} process(es)")
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.updates):
            step()
    for key in ("self_cpu_time_total",) + (("self_cuda_time_total",) if cuda else ()):
        accelerator.print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
