"""Collect benchmarks/scaleout.sh runs into benchmarks/results/scaleout.{json,md}.

    python3 benchmarks/scaleout_report.py scaleout_run [--card "NVIDIA H100 80GB HBM3"]
"""

import argparse
import json
import os

import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--name", default="scaleout")
    args = p.parse_args()
    rows = {}
    for name in sorted(os.listdir(args.run_dir)):
        stage = os.path.join(args.run_dir, name, "tool_memorization")
        if not os.path.exists(os.path.join(stage, "stage.json")):
            continue
        m = json.load(open(os.path.join(stage, "metrics.json")))
        s = json.load(open(os.path.join(stage, "stage.json")))
        c = json.load(open(os.path.join(stage, "config.json")))
        rows[name] = {"processes": s["processes"], "per_device_batch_size": c["stages"]["memorization"]["per_device_batch_size"],
                      "quantization": c["model"]["quantization"], "steps": m["steps"], "loss_first": m["loss_first"],
                      "loss_last": m["loss_last"], "tokens_per_s": m["tokens_per_s"],
                      "peak_memory_gib_rank0": m["peak_memory_gib"], "seconds": m["seconds"]}
    card = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"card": card, "versions": {k: __import__(k).__version__ for k in ("torch", "transformers", "peft", "accelerate")},
              "runs": rows}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"{args.name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    lines = [f"Card: {card}; versions: {result['versions']}", "",
             "| run | processes | batch/device | quant | steps | first loss | last loss | tokens/s (all GPUs) | peak GiB (rank 0) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        peak = "—" if r["peak_memory_gib_rank0"] is None else f"{r['peak_memory_gib_rank0']:.2f}"
        lines.append(f"| {name} | {r['processes']} | {r['per_device_batch_size']} | {r['quantization']} | {r['steps']} | "
                     f"{r['loss_first']:.5f} | {r['loss_last']:.5f} | {r['tokens_per_s']:.0f} | {peak} |")
    print("\n".join(lines))
    with open(os.path.join(args.out, f"{args.name}.md"), "a") as f:
        f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
