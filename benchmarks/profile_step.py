"""Profile this project's training step on one stage shape (torch.profiler), to see where a step's time goes.

    python benchmarks/profile_step.py --stage retrieval [--tiny]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import throughput  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--stage", default="retrieval", choices=list(throughput.SHAPES))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--variant", default="head-at-targets", choices=list(throughput.VARIANTS))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    config = throughput.llama_1b_config(args.tiny)
    sparse, packing, attn, compile = throughput.VARIANTS[args.variant]
    model, tool_ids, vocab, _ = throughput.build(config, padded=True, device=device, attn=attn, sparse=sparse,
                                                 compile=compile)
    batch_size = throughput.SHAPES[args.stage][0]
    data = throughput.examples(args.stage, 4 * batch_size, config.vocab_size, tool_ids, scale=0.1 if args.tiny else 1.0)
    pack = packing and throughput.PACK_MULTIPLE[args.stage]
    throughput.run_ours(model, data, batch_size, vocab, steps=4, device=device, pack_multiple=pack)   # warm up
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        throughput.run_ours(model, data, batch_size, vocab, steps=4, device=device, pack_multiple=pack)
    for key in ("self_cpu_time_total",) + (("self_cuda_time_total",) if device == "cuda" else ()):
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
