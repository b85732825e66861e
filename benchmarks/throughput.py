"""Training speed of the loop users run (toolgen/train.py) against the HF Trainer, each system in its own process.

    python benchmarks/throughput.py --out RUN                  # every GPU of this host; then:
    python benchmarks/throughput_report.py RUN                 # -> benchmarks/results/throughput.{json,md}
    python benchmarks/throughput.py --out /tmp/tp --tiny       # CPU smoke run of both scripts (numbers meaningless)

Systems (each job below is one process, or one `accelerate launch` of several):
  ours         `accelerate launch --config_file launch/accelerate/1gpu.yaml toolgen/train.py --config
               launch/configs/llama-3.2-1b.yaml --stage S` — the reference config users run (bf16 autocast from the
               accelerate config, packed rows with varlen attention, sparse tool rows, fused AdamW, compiled decoder
               layers), with bf16 LoRA (model.quantization=none), max_steps = warmup + steps and no checkpoints;
               the loop's own sampler, collator, gather and logging;
  ours-qlora   the same with the reference config's 4-bit QLoRA (as shipped);
  --variant NAME=CHANGES: more loop systems, `ours` with CHANGES (comma-separated config overrides KEY=VALUE, and
               `amp=no` / `amp=bf16` for the launcher's --mixed_precision), e.g.
               --variant ours-uncompiled=train.compile=false;
  plain, tuned, tuned-eager: the HF Trainer + peft (benchmarks/trainer_baseline.py says what each sets).
Scaling (--scaling N, agent shape): `ours` on N GPUs with DDP, DeepSpeed ZeRO-2 and ZeRO-3, the same global batch as
on one GPU (gradient accumulation / N), so the first update's loss must equal the one-GPU run's.
Model: the Llama-3.2-1B architecture with random weights (random:llama-3.2-1b: vocabulary 128,256 + 46,985 tool
tokens); data: benchmarks/stage_shapes.py, the same files for every system.
Order: repeat 1 of every (stage, system), then repeat 2, ..., each job on the next free GPU (a repeat of a system
lands on another card and at another time); scaling jobs wait for all GPUs. A job that fails or runs past
--timeout is recorded with its error, and the rest go on.
Steady state of a job: updates warmup+1 .. warmup+steps (the loop: from the update-end times it writes to
metrics.json; the Trainer: a synchronized clock) — start-up and compilation are reported apart (process wall time,
and the excess of the warmup updates over steady-state updates).
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from toolgen.config import STAGES  # noqa: E402

TRAINER = ("plain", "tuned", "tuned-eager")
LOOP = {"ours": [], "ours-qlora": ["model.quantization=4bit"]}   # the systems that run toolgen/train.py: their changes
WARMUP_STEPS = {"memorization": (8, 30), "retrieval": (8, 30), "agent": (3, 10)}   # stage: (warmup, timed) updates
LAUNCHERS = {"1gpu": "launch/accelerate/1gpu.yaml", "ddp": "launch/accelerate/multi_gpu.yaml",
             "zero2": "launch/accelerate/deepspeed_zero2.yaml", "zero3": "launch/accelerate/deepspeed_zero3.yaml"}


PROBE = """
import json, sys, time
import torch
from toolgen import models
models.resolve_model(sys.argv[1])
info = {"versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "accelerate")}}
if torch.cuda.is_available():
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    rates = []
    for _ in range(3):   # three timings of 20 products after a warm-up: the best is the measured peak
        a @ b
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            a @ b
        torch.cuda.synchronize()
        rates.append(20 * 2 * 8192**3 / (time.perf_counter() - t0))
    info.update(card=torch.cuda.get_device_name(), gpus=torch.cuda.device_count(), matmul_peak_flops=max(rates))
else:
    info.update(card="cpu", gpus=0, matmul_peak_flops=None)
print(json.dumps(info))
"""


def plan(stages, systems, repeats, once, scaling, scaling_stage="agent", first=1, launchers=("ddp", "zero2", "zero3"),
         scaling_systems=("ours",)):
    """The jobs in run order. `once`: systems run in the first repeat only; `first`: the first repeat's number (more
    repeats into an earlier run's folder: its scaling jobs are not planned again); `launchers`: the scaling jobs';
    `scaling_systems`: the loop systems run on N GPUs (each launcher, system after system)."""
    jobs = []
    for r in range(first, repeats + 1):
        for stage in stages:
            for system in systems:
                if r == 1 or system not in once:
                    jobs.append({"name": f"{stage}-{system}-r{r}", "stage": stage, "system": system, "repeat": r,
                                 "gpus": 1, "launcher": "1gpu"})
    if scaling and scaling > 1 and first == 1:
        for system in scaling_systems:
            for launcher in launchers:
                jobs.append({"name": f"{scaling_stage}-{system}-{launcher}{scaling}", "stage": scaling_stage,
                             "system": system, "repeat": 1, "gpus": scaling, "launcher": launcher})
    return jobs


def job_steps(job, args):
    """(warmup, timed updates) of a job: the stage's, or --scaling-steps timed updates on several GPUs (an update
    there is N times shorter: more of them for as long a measurement)."""
    warmup, steps = args.steps[job["stage"]]
    return warmup, (args.scaling_steps or steps) if job["gpus"] > 1 else steps


def command(job, args, folder):
    """The command line of one job (run from the repository root)."""
    stage = job["stage"]
    warmup, steps = job_steps(job, args)
    if job["system"] in args.loop:
        from toolgen.config import load_config
        ga = load_config(args.config).stages[stage].gradient_accumulation_steps
        if ga % job["gpus"]:
            raise ValueError(f"{job['name']}: gradient accumulation {ga} is not divisible by {job['gpus']} GPUs")
        # --gpu_ids all: 1gpu.yaml's gpu_ids "0" would otherwise replace the CUDA_VISIBLE_DEVICES this job was given
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(job["gpus"]),
                  "--gpu_ids", "all"]
        changes = args.loop[job["system"]]
        amp = [c.split("=", 1)[1] for c in changes if c.startswith("amp=")]
        if args.tiny:
            launch += ["--config_file", "launch/accelerate/cpu.yaml"]
        else:
            launch += ["--config_file", LAUNCHERS[job["launcher"]]]
            if job["launcher"].startswith("zero") or amp:   # (the DS JSON's bf16 "auto" follows this flag)
                launch += ["--mixed_precision", amp[-1] if amp else "bf16"]
        sets = [f"model.name={args.model}", f"stages.{stage}.max_steps={warmup + steps}", "train.save_steps=0",
                f"stages.{stage}.gradient_accumulation_steps={ga // job['gpus']}", "model.quantization=none"]
        sets += args.ours_set + [c for c in changes if not c.startswith("amp=")]
        if args.tiny:   # flash and flex attention and compilation are CUDA paths
            sets += ["model.attn_implementation=sdpa", "train.compile=false"]
        # --from-scratch: a fresh adapter instead of the previous stage's, the same work per step
        return launch + ["toolgen/train.py", "--config", args.config, "--stage", stage, "--data-dir", args.data,
                         "--output-dir", folder, "--overwrite", "--from-scratch"] + [x for s in sets for x in ("--set", s)]
    return [sys.executable, "benchmarks/trainer_baseline.py", "--system", job["system"], "--stage", stage,
            "--data-dir", args.data, "--config", args.config, "--model", args.model, "--warmup", str(warmup),
            "--steps", str(steps), "--out", os.path.join(folder, "result.json")]


def steady_state(clock, warmup, steps):
    """From the loop's update-end times and tokens: tokens/s and seconds per update over updates warmup+1 ..
    warmup+steps, and how much longer the warmup updates took than as many steady ones (compilation, start-up)."""
    ends, tokens = clock["update_end_s"], clock["tokens"]
    if len(ends) < warmup + steps or warmup < 1:
        raise ValueError(f"{len(ends)} updates recorded, {warmup} + {steps} needed (warmup >= 1)")
    seconds = ends[warmup + steps - 1] - ends[warmup - 1]
    update_s = seconds / steps
    timed = sum(tokens[warmup:warmup + steps])
    return {"tokens_per_s": timed / seconds, "update_s": update_s, "timed_tokens": timed,
            "warmup_excess_s": ends[warmup - 1] - warmup * update_s}


def result(job, args, folder):
    """What a finished job measured, from the files it wrote."""
    warmup, steps = job_steps(job, args)
    if job["system"] not in args.loop:
        with open(os.path.join(folder, "result.json"), encoding="utf-8") as f:
            return json.load(f)
    with open(os.path.join(folder, STAGES[job["stage"]].folder, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    return {**steady_state(metrics["clock"], warmup, steps), "first_loss": metrics["loss_history"][0],
            "peak_mem_gib": metrics["peak_memory_gib"], "peak_reserved_gib": metrics["peak_memory_reserved_gib"],
            "warmup": warmup, "steps": steps}


class Cards:
    """Which GPUs are free; a job takes the lowest free ids it needs, in the order the jobs were planned."""

    def __init__(self, ids):
        self.free, self.cond = list(ids), threading.Condition()

    def take(self, n):
        with self.cond:
            self.cond.wait_for(lambda: len(self.free) >= n)
            taken, self.free = self.free[:n], self.free[n:]
            return taken

    def give(self, ids):
        with self.cond:
            self.free = sorted(self.free + ids)
            self.cond.notify_all()


def run_until(cmd, env, log, timeout):
    """Run one job in its own process group -> its exit code, or "timeout": past `timeout` seconds its log gets
    where each of its Python processes stands (py-spy dump, when installed: the reference config's compiled path sat
    in its first update for 240 s on an H200 and the log said nothing), then the whole group is stopped (the
    launcher's training process too, which a plain subprocess timeout would leave running on the GPU)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log.write(f"\n[throughput] timeout after {timeout} s; where its processes stand:\n")
        log.flush()
        spy = shutil.which("py-spy")
        if spy:
            subprocess.run([spy, "dump", "--subprocesses", "--pid", str(proc.pid)], stdout=log,
                           stderr=subprocess.STDOUT, timeout=120)
        else:
            log.write("(py-spy is not installed: no stacks)\n")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return "timeout"


def run_job(job, args, lock):
    folder = os.path.join(args.out, "jobs", job["name"])
    os.makedirs(folder, exist_ok=True)
    cmd = command(job, args, folder)
    # each job tokenizes into its own datasets cache: parallel jobs never write the same cache files
    # TORCH_LOGS=recompiles: a compiled job's log says what made it compile again (the reference config's compiled
    # path did not finish its first update in 240 s on an H200: results/throughput.md)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", TORCH_LOGS="recompiles",
               HF_DATASETS_CACHE=os.path.join(folder, "datasets_cache"))
    if not args.tiny:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(job["cards"])
    for extra in [[]] + ([["--set", "train.compile=false"]] if job["gpus"] > 1 else []):
        t0 = time.perf_counter()   # a scaling job that fails compiled is tried once more without compilation
        with open(os.path.join(folder, "log.txt"), "a", encoding="utf-8") as log:
            code = run_until(cmd + extra, env, log, args.timeout)
        if code == 0:
            break
    row = {**job, "command": " ".join(cmd + extra), "retried_without_compile": bool(extra),
           "process_wall_s": round(time.perf_counter() - t0, 1)}
    try:
        if code != 0:
            raise RuntimeError(f"exit {code}")
        row.update(result(job, args, folder))
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        with open(os.path.join(folder, "log.txt"), encoding="utf-8", errors="replace") as f:
            row["error"] = f"{e}: " + f.read()[-1500:]
    with lock:
        with open(os.path.join(args.out, "results.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[throughput] {job['name']} on {job['cards']}: "
              + (f"{row['tokens_per_s']:.0f} tokens/s" if "error" not in row else f"FAILED ({code})"), flush=True)


def run_all(jobs, args, card_ids):
    """Start each job, in order, as soon as the GPUs it needs are free."""
    cards, lock, threads = Cards(card_ids), threading.Lock(), []

    def go(job):
        try:
            run_job(job, args, lock)
        finally:
            cards.give(job["cards"])
    for job in jobs:
        job["cards"] = cards.take(job["gpus"])
        threads.append(threading.Thread(target=go, args=(job,)))
        threads[-1].start()
    for t in threads:
        t.join()


def prepare_run(args, card_ids, jobs):
    """Data and run.json. A second command into the same folder (e.g. the scaling jobs once the other GPUs are free)
    keeps the data and adds its jobs and command to run.json."""
    import stage_shapes
    path = os.path.join(args.out, "run.json")
    command_line = " ".join(["python"] + sys.argv)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
        info.update(command=info["command"] + " ; " + command_line, jobs=info["jobs"] + [j["name"] for j in jobs],
                    cards=sorted(set(info["cards"]) | set(card_ids)))
    else:
        # in a process of its own (the GPU it uses is free again for the jobs): the random model's folder, built once
        # before the jobs share it, and what this host is
        host = json.loads(subprocess.run([sys.executable, "-c", PROBE, args.model], cwd=ROOT, check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
        counts = [32, 32, 16] if args.tiny else [1600, 1600, 400]
        n_tools = 100 if args.tiny else stage_shapes.TOOL_TOKENS
        lengths = stage_shapes.write(args.data, args.model, counts, n_tools=n_tools)
        info = {**host, "command": command_line, "model": args.model, "tools": n_tools, "config": args.config,
                "steps": args.steps, "scaling_steps": args.scaling_steps, "cards": card_ids,
                "jobs": [j["name"] for j in jobs],
                "examples": {s: len(v["tokens"]) for s, v in lengths.items()}}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="run folder: data/, jobs/<name>/, results.jsonl, run.json")
    p.add_argument("--stages", nargs="+", default=list(WARMUP_STEPS), choices=list(WARMUP_STEPS))
    p.add_argument("--variant", action="append", default=[], metavar="NAME=CHANGES",
                   help="a loop system: ours with CHANGES (KEY=VALUE,... and amp=no|bf16)")
    p.add_argument("--systems", nargs="*", default=["ours", "ours-qlora", *TRAINER],
                   help="loop systems, variants and Trainer systems (none: scaling jobs only)")
    p.add_argument("--once", nargs="*", default=["ours-qlora"],
                   help="systems measured in the first repeat only (device time)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeat-from", type=int, default=1,
                   help="the first repeat to run: more repeats into an earlier run's folder (e.g. 2 with --repeats 3)")
    p.add_argument("--scaling", type=int, default=None, help="GPUs of the scaling jobs (default: all, if > 1)")
    p.add_argument("--scaling-launchers", nargs="+", choices=["ddp", "zero2", "zero3"],
                   default=["ddp", "zero2", "zero3"],
                   help="which scaling jobs (device time: ZeRO-3 is there for its memory, not its speed)")
    p.add_argument("--scaling-systems", nargs="+", default=["ours"],
                   help="loop systems of the scaling jobs, e.g. ours and a variant with train.balance_processes=false "
                        "(a variant without a one-GPU run is compared with ours on one GPU)")
    p.add_argument("--scaling-steps", type=int, default=None,
                   help="timed updates of the scaling jobs (default: the stage's, as on one GPU)")
    p.add_argument("--gpus", default=None, help="GPU ids to use, e.g. 0,1,2,3 (default: all)")
    p.add_argument("--timeout", type=int, default=300, help="seconds before a job is stopped and recorded as failed")
    p.add_argument("--config", default="launch/configs/llama-3.2-1b.yaml")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config overrides for the loop's jobs (e.g. train.compile=false)")
    p.add_argument("--tiny", action="store_true", help="the tiny model on CPU, few steps: checks the scripts only")
    args = p.parse_args()
    args.loop = dict(LOOP)
    for v in args.variant:
        name, sep, changes = v.partition("=")
        if not sep or name in args.loop or name in TRAINER:
            p.error(f"--variant {v!r}: expected NAME=CHANGES with a new name")
        args.loop[name] = [c for c in changes.split(",") if c]
    if not 1 <= args.repeat_from <= args.repeats:
        p.error(f"--repeat-from {args.repeat_from}: expected 1 .. --repeats ({args.repeats})")
    unknown = [s for s in args.systems + args.once if s not in args.loop and s not in TRAINER]
    unknown += [s for s in args.scaling_systems if s not in args.loop]
    if unknown:
        p.error(f"unknown systems {unknown}: known {[*args.loop, *TRAINER]} (variants with --variant)")
    args.model = "tiny" if args.tiny else "random:llama-3.2-1b"
    if args.tiny:
        args.config, args.steps, args.scaling = "launch/configs/tiny.yaml", {s: (1, 2) for s in WARMUP_STEPS}, 0
        card_ids = ["cpu"]
    else:
        import torch
        n = torch.cuda.device_count()
        card_ids = args.gpus.split(",") if args.gpus else [str(i) for i in range(n)]
        args.steps = WARMUP_STEPS
        if args.scaling is None:
            args.scaling = len(card_ids)
    args.out = os.path.abspath(args.out)
    args.data = os.path.join(args.out, "data")
    os.makedirs(args.out, exist_ok=True)
    jobs = plan(args.stages, args.systems, args.repeats, set(args.once), args.scaling, first=args.repeat_from,
                launchers=args.scaling_launchers, scaling_systems=args.scaling_systems)
    prepare_run(args, card_ids, jobs)
    run_all(jobs, args, card_ids)


if __name__ == "__main__":
    main()
