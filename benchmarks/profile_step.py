"""Profile the training loop's own update (toolgen.step.update on the loop's model, optimizer and batches, built by
toolgen.train.build) on one stage shape with torch.profiler, to see where an update's time goes.

    python benchmarks/profile_step.py --stage retrieval [--set train.compile=false ...]      # GPU: random Llama-3.2-1B
    python benchmarks/profile_step.py --stage retrieval --tiny                                # CPU: checks the script
    accelerate launch --config_file launch/accelerate/multi_gpu.yaml --num_processes 4 benchmarks/profile_step.py \
        --stage agent --set stages.agent.gradient_accumulation_steps=2                   # DDP: process 0's tables

The data are benchmarks/stage_shapes.py's synthetic stage files (the shapes benchmarks/throughput.py times); the first
--warmup updates run unprofiled (compilation, autotuning), then --timed updates are timed, then, as asked:
  --gaps N          a CUDA-only trace of N updates: the GPU's busy time and its largest idle gaps (process 0);
  --memory N        the allocated peak of N updates and what was live there, by the Python code that allocated it;
  --ga-sweep K ...  updates of K micro-batches each, and a fit: fixed seconds per update + seconds per micro-batch;
  --updates N       torch.profiler's CPU and CUDA tables of N updates (0: none).
benchmarks/step_anatomy.py reads the trace and the allocator's history.
"""

import argparse
import os
import sys
import tempfile
import time
from statistics import linear_regression

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402

import stage_shapes  # noqa: E402
import step_anatomy  # noqa: E402
from toolgen import train  # noqa: E402
from toolgen.config import load_config  # noqa: E402
from toolgen.step import update  # noqa: E402


def micro_batches(loader):
    """The loader's micro-batches in order, epoch after epoch."""
    while True:
        yield from loader


def run_updates(step, n, ga):
    """n updates of ga micro-batches -> [(seconds to fetch the group, seconds of the update)] (update() ends in a host
    sync, its loss and gradient norm: no other sync is needed for the clock)."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        group = step.fetch(ga)
        t1 = time.perf_counter()
        step(group)
        times.append((t1 - t0, time.perf_counter() - t1))
    return times


def ga_sweep(accelerator, step, sweep, timed):
    """Seconds per update at several micro-batch counts per update, in one process after one compilation, over the
    same micro-batches for every K (fetched once: the sampler's length order would otherwise give each K other
    examples): the intercept of the fit is what an update costs apart from its micro-batches (host sync, clipping,
    optimizer; the fetch is timed apart, per micro-batch)."""
    fetch0 = time.perf_counter()
    fixed = step.fetch(max(sweep) * timed)
    fetch = (time.perf_counter() - fetch0) / len(fixed)
    accelerator.print(f"[sweep] {len(fixed)} micro-batches fetched once: {fetch * 1e3:.1f} ms each")
    points, configured = [], accelerator.gradient_accumulation_steps
    for ga in sweep:
        accelerator.gradient_accumulation_steps = ga
        accelerator.step = 0   # accelerate's micro-batch counter: the next update's last micro-batch syncs
        t0 = time.perf_counter()
        for i in range(0, len(fixed), ga):
            step(fixed[i:i + ga])
        per_update = (time.perf_counter() - t0) / (len(fixed) // ga)
        points.append((ga, per_update))
        accelerator.print(f"[sweep] {ga} micro-batches/update: {per_update:.4f} s/update over the same "
                          f"{len(fixed)} micro-batches")
    accelerator.gradient_accumulation_steps, accelerator.step = configured, 0   # the profiled updates are the config's
    if len(set(sweep)) > 1:   # least squares: s/update = fixed + K x per micro-batch
        fit = linear_regression([k for k, _ in points], [t for _, t in points])
        accelerator.print(f"[sweep] fit: {fit.intercept * 1e3:.1f} ms per update + {fit.slope * 1e3:.1f} ms per "
                          "micro-batch (+ the fetch above)")


def trace_gaps(accelerator, step, n, ga):
    """A CUDA-only trace of n updates (process 0): GPU busy time against the wall time, and the largest idle gaps."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        run_updates(step, n, ga)
        wall = time.perf_counter() - t0
    if not accelerator.is_main_process:
        return
    path = os.path.join(tempfile.mkdtemp(prefix="toolgen-trace-"), "trace.json")
    prof.export_chrome_trace(path)
    g = step_anatomy.gpu_gaps(path)
    print(f"[gaps] {n} updates: wall {wall * 1e3 / n:.1f} ms/update, GPU busy {g['busy_us'] / 1e3 / n:.1f}, "
          f"idle within the trace {g['idle_us'] / 1e3 / n:.1f} (in {g['gaps']} gaps >= 0.2 ms: "
          f"{g['idle_in_gaps_us'] / 1e3 / n:.1f}), outside it {(wall * 1e6 - g['span_us']) / 1e3 / n:.1f}; "
          f"NCCL kernels {g['nccl_us'] / 1e3 / n:.1f}")
    for gap, before, after in g["largest"]:
        print(f"[gaps]   {gap / 1e3:7.2f} ms after {before} | before {after}")
    print(f"[gaps] trace (chrome://tracing, Perfetto): {path}")


def memory_peak(accelerator, step, n, ga):
    """The allocated peak of n updates and what was live there (process 0's device)."""
    device = accelerator.device.index or 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(stacks="python", max_entries=2_000_000)
    run_updates(step, n, ga)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    peak, sites = step_anatomy.peak_sites(snapshot, device, baseline)
    by_torch = torch.cuda.max_memory_allocated() / 2**30
    accelerator.print(f"[memory] before the updates {baseline / 2**30:.2f} GiB allocated (weights, optimizer "
                      f"state); peak {peak / 2**30:.2f} GiB by the replay, {by_torch:.2f} by torch; live at the peak "
                      "beyond the baseline:")
    for size, site in sites:
        accelerator.print(f"[memory]   {size / 2**30:6.2f} GiB  {site}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", default="retrieval", choices=list(stage_shapes.SHAPES))
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--timed", type=int, default=5, help="updates timed unprofiled after the warmup (s/update)")
    p.add_argument("--updates", type=int, default=4, help="updates profiled (0: no profiler table)")
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--ga-sweep", type=int, nargs="+", default=[], metavar="K",
                   help="also time updates of K micro-batches, and fit the fixed cost per update")
    p.add_argument("--gaps", type=int, default=0, metavar="N", help="a CUDA-only trace of N updates: GPU idle gaps")
    p.add_argument("--memory", type=int, default=0, metavar="N", help="the allocated peak of N updates, by site")
    p.add_argument("--examples", type=int, default=None,
                   help="examples of the stage's file (default 64, 64, 16; an update holds per_device_batch_size x "
                   "gradient_accumulation_steps x processes; each new epoch restarts the loader)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    if args.ga_sweep and any(max(args.ga_sweep) % k for k in args.ga_sweep):
        p.error(f"--ga-sweep {args.ga_sweep}: each K must divide the largest (the same micro-batches for every K)")
    model = "tiny" if args.tiny else "random:llama-3.2-1b"
    config = "launch/configs/tiny.yaml" if args.tiny else "launch/configs/llama-3.2-1b.yaml"
    out = tempfile.mkdtemp(prefix="toolgen-profile-")
    counts = [args.examples if s == args.stage and args.examples else n
              for s, n in (("memorization", 64), ("retrieval", 64), ("agent", 16))]
    stage_shapes.write(os.path.join(out, "data"), model, counts, n_tools=100 if args.tiny else
                       stage_shapes.TOOL_TOKENS)
    argv = ["--stage", args.stage, "--config", config, "--data-dir", os.path.join(out, "data"), "--output-dir", out,
            "--from-scratch", "--set", f"model.name={model}"] + [x for o in args.overrides for x in ("--set", o)]
    targs = train.parse_args(argv)
    cfg = load_config(targs.config, targs.overrides)
    sc = cfg.stages[args.stage]
    accelerator, tokenizer, net, optimizer, loader, params, _, loss_fn = train.build(
        targs, cfg, sc, None, os.path.join(out, "data"), os.path.join(out, "checkpoints"))
    batches, ga = micro_batches(loader), sc.gradient_accumulation_steps
    net.train()

    def step(group):
        update(accelerator, net, optimizer, group, len(tokenizer), params, cfg.train.max_grad_norm, loss_fn)
    step.fetch = lambda k: [next(batches) for _ in range(k)]
    run_updates(step, args.warmup, ga)
    times = run_updates(step, args.timed, ga)
    seconds = sum(f + u for f, u in times) / max(args.timed, 1)
    accelerator.print(f"[profile] {args.timed} updates unprofiled: {seconds:.4f} s/update on "
                      f"{accelerator.num_processes} process(es)")
    cuda = accelerator.device.type == "cuda"
    if args.gaps and cuda:
        trace_gaps(accelerator, step, args.gaps, ga)
    if args.memory and cuda:
        memory_peak(accelerator, step, args.memory, ga)
    if args.ga_sweep:
        ga_sweep(accelerator, step, args.ga_sweep, max(args.timed, 1))
    if args.updates:
        activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=activities) as prof:
            run_updates(step, args.updates, ga)
        for key in ("self_cpu_time_total",) + (("self_cuda_time_total",) if cuda else ()):
            accelerator.print(prof.key_averages().table(sort_by=key, row_limit=args.rows))


if __name__ == "__main__":
    main()
