"""The report of a benchmarks/throughput.py run: medians over repeats, spread, memory, MFU, scaling, the targets.

    python benchmarks/throughput_report.py RUN [--out benchmarks/results/throughput] [--ours SYSTEM]   # -> .json, .md

--ours: the loop system whose settings are the reference config as shipped (default `ours`; a variant when the
config was changed to that variant's settings after the run); the targets are read on it.

Keys (throughput.json): stages -> stage -> ours/plain/tuned/qlora `_tokens_per_s` (median over repeats of
steady-state non-pad tokens per second), `_spread` ([min, max]), `_peak_mem_gib` (max_memory_allocated, whole
process, median), `_peak_reserved_gib`, `ours_mfu` (benchmarks/flops.py: useful FLOPs per token x tokens/s / the card's
datasheet dense bf16 peak), `ours_mfu_measured_peak`, `repeats`, `tuned_system` (the better of the tuned Trainer
settings that ran), `qlora_over_bf16` (ours-qlora / ours: they differ by the 4-bit base alone); scaling -> N ->
{system, ddp_speedup, zero2_speedup, zero3_speedup: tokens/s on N GPUs / the same system on one GPU, same stage and
global batch; zero3_peak_mem_gib (rank 0); first_loss per setup}; scaling_by_system -> system -> N -> the same (every
loop system run on several GPUs); ours_system; card; measures.
"""

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import flops  # noqa: E402

TUNED = ("tuned", "tuned-eager")
TARGETS = {"over_tuned": 1.5, "over_plain": 4.0, "mem_vs_plain": 0.5, "mem_vs_tuned": 0.8, "agent_mfu": 0.40,
           "scaling": {"4": 3.6, "2": 1.85}, "qlora_over_bf16": 0.8}


def load(run):
    with open(os.path.join(run, "run.json"), encoding="utf-8") as f:
        info = json.load(f)
    with open(os.path.join(run, "results.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(run, "data", "lengths.json"), encoding="utf-8") as f:
        lengths = json.load(f)
    return info, rows, lengths


def summary(rows):
    """Median and [min, max] of each measure over the repeats that ran; the failures' errors."""
    ok = [r for r in rows if "error" not in r]
    out = {"repeats": len(ok), "failed": [r["error"][:300] for r in rows if "error" in r]}
    for key in ("tokens_per_s", "update_s", "peak_mem_gib", "peak_reserved_gib", "warmup_excess_s", "process_wall_s"):
        values = [r[key] for r in ok if r.get(key) is not None]
        if values:
            out[key] = statistics.median(values)
            out[key + "_spread"] = [min(values), max(values)]
    out["first_loss"] = [r.get("first_loss") for r in ok]
    return out


def model_config(info):
    from toolgen import models
    with open(os.path.join(models.resolve_model(info["model"]), "config.json"), encoding="utf-8") as f:
        return json.load(f)


def stage_table(info, rows, lengths, ours="ours"):
    from toolgen.config import load_config
    cfg = load_config(info["config"])
    config = model_config(info)
    peak = flops.datasheet_peak(info["card"])
    stages = {}
    for stage in [s for s in info["steps"] if any(r["stage"] == s for r in rows)]:
        one = [r for r in rows if r["stage"] == stage and r["gpus"] == 1]
        per = {s: summary([r for r in one if r["system"] == s]) for s in sorted({r["system"] for r in one})}
        tuned = max((s for s in TUNED if per.get(s, {}).get("tokens_per_s")), default=None,
                    key=lambda s: per[s]["tokens_per_s"])
        names = {"ours": ours, "plain": "plain", "tuned": tuned, "qlora": "ours-qlora"}
        row = {"repeats": {k: per[v]["repeats"] for k, v in names.items() if v in per}, "tuned_system": tuned,
               "systems": per}
        n_tools = info["tools"]
        work = flops.flops_per_token(config, cfg.lora.r, config["vocab_size"] + n_tools, n_tools,
                                     lengths[stage]["tokens"], lengths[stage]["targets"])
        row["flops_per_token"] = work
        for s in per.values():   # the same useful work credited to every system
            tps = s.get("tokens_per_s")
            s["mfu"] = work["total"] * tps / peak if tps and peak else None
            s["mfu_measured_peak"] = (work["total"] * tps / info["matmul_peak_flops"]
                                      if tps and info.get("matmul_peak_flops") else None)
        for key, system in names.items():
            s = per.get(system) or {}
            for name, field in (("tokens_per_s", "tokens_per_s"), ("spread", "tokens_per_s_spread"),
                                ("peak_mem_gib", "peak_mem_gib"), ("peak_reserved_gib", "peak_reserved_gib"),
                                ("mfu", "mfu"), ("mfu_measured_peak", "mfu_measured_peak")):
                row[f"{key}_{name}"] = s.get(field)
        # QLoRA against the bf16 loop it differs from by the 4-bit base alone (`ours`: ours-qlora is ours + 4bit)
        q, b = (per.get(x, {}).get("tokens_per_s") for x in ("ours-qlora", "ours"))
        row["qlora_over_bf16"] = q / b if q and b else None
        stages[stage] = row
    return stages


def scaling_table(rows, stages):
    """N GPUs against one GPU of the same system (the same settings), same stage and global batch -> {N: entry} for
    `ours` (or the first system that ran on several GPUs) and {system: {N: entry}} for every such system. A variant
    with no one-GPU run of its own (e.g. train.balance_processes=false, which one process does not read) is compared
    with `ours` on one GPU; the entry names that system."""
    by_system = {}
    for n, system in sorted({(r["gpus"], r["system"]) for r in rows if r["gpus"] > 1}):
        setups = {r["launcher"]: r for r in rows if r["gpus"] == n and r["system"] == system}
        stage = next(iter(setups.values()))["stage"]
        one_system = system if system in stages[stage]["systems"] else "ours"
        one = stages[stage]["systems"][one_system]
        entry = {"stage": stage, "system": system, "one_gpu_system": one_system,
                 "one_gpu_tokens_per_s": one.get("tokens_per_s"), "one_gpu_first_loss": one["first_loss"]}
        for launcher, r in setups.items():
            if "error" in r:
                entry[f"{launcher}_error"] = r["error"][:300]
                continue
            entry[f"{launcher}_tokens_per_s"] = r["tokens_per_s"]
            entry[f"{launcher}_speedup"] = r["tokens_per_s"] / entry["one_gpu_tokens_per_s"] \
                if entry["one_gpu_tokens_per_s"] else None
            entry[f"{launcher}_peak_mem_gib"] = r["peak_mem_gib"]
            entry[f"{launcher}_first_loss"] = r["first_loss"]
        by_system.setdefault(system, {})[str(n)] = entry
    main = by_system.get("ours") or next(iter(by_system.values()), {})
    return main, by_system


def report(run, ours="ours"):
    info, rows, lengths = load(run)
    if not any(r["system"] == ours and r["gpus"] == 1 and "error" not in r for r in rows):
        raise ValueError(f"--ours {ours}: no one-GPU result of that system in {run}/results.jsonl")
    stages = stage_table(info, rows, lengths, ours)
    scaling, by_system = scaling_table(rows, stages)
    return {"measures": "toolgen/train.py loop", "ours_system": ours, "card": info["card"], "gpus": info["gpus"],
            "versions": info["versions"], "command": info["command"], "model": info["model"], "config": info["config"],
            "steps": info["steps"], "matmul_peak_tflops": (info["matmul_peak_flops"] or 0) / 1e12 or None,
            "datasheet_peak_tflops": (flops.datasheet_peak(info["card"]) or 0) / 1e12 or None,
            "stages": stages, "scaling": scaling, "scaling_by_system": by_system, "targets": TARGETS}


def F(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def spread(s, digits=0):
    return "-" if not s else f"{F(s[0], digits)}-{F(s[1], digits)}"


def verdict(value, target, higher=True):
    if value is None:
        return "not measured"
    return "met" if (value >= target if higher else value <= target) else "**missed**"


def markdown(r):
    t = r["targets"]
    lines = ["# Training throughput: the loop users run vs the HF Trainer", "",
             f"Card: {r['card']} x {r['gpus']} (one host); versions {r['versions']}; datasheet dense bf16 peak "
             f"{F(r['datasheet_peak_tflops'], 1)} TFLOP/s, measured 8192^3 bf16 matmul {F(r['matmul_peak_tflops'], 1)} "
             f"TFLOP/s.", "", f"Command: `{r['command']}` then `python benchmarks/throughput_report.py RUN"
             + (f" --ours {r['ours_system']}" if r["ours_system"] != "ours" else "") + "`.", "",
             f"Model {r['model']}, config {r['config']}; warmup and timed updates per stage: {r['steps']}. "
             f"`ours` in the targets below is the system `{r['ours_system']}` (the reference config as shipped).", "",
             "| stage | system | tokens/s (median) | min-max | vs plain | vs tuned | peak alloc GiB | peak reserved GiB "
             "| s/update | warmup excess s | process s | MFU (datasheet) | MFU (measured peak) | repeats |",
             "|---" * 14 + "|"]
    for stage, row in r["stages"].items():
        for system, s in row["systems"].items():
            tps, mfu, mfu2 = s.get("tokens_per_s"), s.get("mfu"), s.get("mfu_measured_peak")
            ratio = lambda other: F(tps / row[other], 2) + "x" if tps and row.get(other) else "-"  # noqa: E731
            lines.append(f"| {stage} | {system} | {F(tps)} | {spread(s.get('tokens_per_s_spread'))} | "
                         f"{ratio('plain_tokens_per_s')} | {ratio('tuned_tokens_per_s')} | {F(s.get('peak_mem_gib'), 2)} | "
                         f"{F(s.get('peak_reserved_gib'), 2)} | {F(s.get('update_s'), 3)} | "
                         f"{F(s.get('warmup_excess_s'), 1)} | {F(s.get('process_wall_s'), 0)} | {F(mfu, 3)} | "
                         f"{F(mfu2, 3)} | {s['repeats']} |")
            for error in s["failed"]:
                lines.append(f"| {stage} | {system} | failed: {error[:200].replace('|', '/')} |" + " |" * 11)
    lines += ["", "## Against the targets", "",
              "| stage | ours / tuned (>= 1.5) | ours / plain (>= 4) | mem ours / plain (<= 0.5) | mem ours / tuned "
              "(<= 0.8) | QLoRA / bf16 LoRA, same loop settings (>= 0.8) | MFU (agent >= 0.40) |", "|---" * 7 + "|"]
    for stage, row in r["stages"].items():
        def ratio(a, b):
            return row[a] / row[b] if row.get(a) and row.get(b) else None
        cells = [(ratio("ours_tokens_per_s", "tuned_tokens_per_s"), t["over_tuned"], True),
                 (ratio("ours_tokens_per_s", "plain_tokens_per_s"), t["over_plain"], True),
                 (ratio("ours_peak_mem_gib", "plain_peak_mem_gib"), t["mem_vs_plain"], False),
                 (ratio("ours_peak_mem_gib", "tuned_peak_mem_gib"), t["mem_vs_tuned"], False),
                 (row.get("qlora_over_bf16"), t["qlora_over_bf16"], True)]
        mfu = row["ours_mfu"]
        lines.append(f"| {stage} | " + " | ".join(f"{F(v, 2)} ({verdict(v, g, h)})" for v, g, h in cells)
                     + f" | {F(mfu, 3)}" + (f" ({verdict(mfu, t['agent_mfu'])})" if stage == "agent" else "") + " |")
    tables = r.get("scaling_by_system", {"": r["scaling"]}).values()   # (older results have the one table)
    for n, e in [(n, e) for table in tables for n, e in table.items()]:
        goal = t["scaling"].get(n)
        lines += ["", f"## {n} GPUs ({e['stage']} shape, system {e['system']}, same global batch as one GPU)", "",
                  "| setup | tokens/s | speed-up vs 1 GPU | peak alloc GiB (rank 0) | first loss |", "|---" * 5 + "|",
                  f"| 1 GPU ({e.get('one_gpu_system', e['system'])}, median) | {F(e['one_gpu_tokens_per_s'])} "
                  "| 1.00x | - | "
                  f"{', '.join(F(x, 5) for x in e['one_gpu_first_loss'])} |"]
        for setup in ("ddp", "zero2", "zero3"):
            if f"{setup}_error" in e:
                lines.append(f"| {setup} | failed: {e[setup + '_error'][:200].replace('|', '/')} | | | |")
            elif f"{setup}_tokens_per_s" in e:
                sp = e[f"{setup}_speedup"]
                lines.append(f"| {setup} | {F(e[setup + '_tokens_per_s'])} | {F(sp, 2)}x"
                             + (f" ({verdict(sp, goal)} >= {goal})" if goal and setup != "zero3" else "")
                             + f" | {F(e[setup + '_peak_mem_gib'], 2)} | {F(e[setup + '_first_loss'], 5)} |")
    lines += ["", "## How the numbers are made", "", flops.__doc__.strip(), "",
              "FLOPs per token of each stage (from the tokenized lengths of its examples): "
              + "; ".join(f"{s}: {F(row['flops_per_token']['total'] / 1e9, 2)} GFLOP (frozen "
                          f"{F(row['flops_per_token']['frozen'] / 1e9, 2)}, LoRA {F(row['flops_per_token']['lora'] / 1e9, 3)}, "
                          f"attention {F(row['flops_per_token']['attention'] / 1e9, 3)}, head "
                          f"{F(row['flops_per_token']['head'] / 1e9, 3)})" for s, row in r["stages"].items())]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run")
    p.add_argument("--out", default=os.path.join(HERE, "results", "throughput"), help="path without extension")
    p.add_argument("--ours", default="ours", help="the loop system that is the reference config as shipped")
    args = p.parse_args()
    try:
        r = report(args.run, args.ours)
    except ValueError as e:
        p.error(str(e))
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(r, f, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as f:
        f.write(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
