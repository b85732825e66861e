"""Merge the evaluation outputs of benchmarks/quality.sh into benchmarks/results/quality.{json,md}.

    python benchmarks/quality_report.py --baselines EVAL_BASE/metrics.json --run main=EVAL_MAIN/metrics.json \
        [--run synthetic_queries=...] [--run no_memorization=...] [--run distractors=...] [--out benchmarks/results]

`overall` maps each system to {ndcg@1, ndcg@3, ndcg@5, mrr, recall@5} (standard definitions, fractions) on the test
queries; `toolgen` is the best fine-tuned stage by NDCG@5 over the 2,490-API tool space (the distractors run has a
harder tool space and is reported apart, under `distractors`). `agent_tool_selection_accuracy` is that of the agent
stage of the same run. Per-split values come from the query ids' source files. A missing file is skipped, with a note.
"""

import argparse
import json
import os

KEYS = ("ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5")
SPLITS = ("G1_instruction", "G1_category", "G2_instruction", "G2_category")


def systems_of(path):
    with open(path) as f:
        return json.load(f)["systems"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baselines", required=True, help="evaluation of BM25 and MiniLM")
    p.add_argument("--run", action="append", default=[], metavar="NAME=METRICS_JSON",
                   help="evaluation of one run's stages; `main` (the three stages and the untrained base) is required")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    systems = dict(systems_of(args.baselines))
    runs = dict(r.split("=", 1) for r in args.run)
    if "main" not in runs:
        p.error("--run main=... is required")
    for run, path in runs.items():
        if not os.path.exists(path):
            print(f"quality_report: {path} not found: run '{run}' left out")
            continue
        for name, m in systems_of(path).items():
            systems[name.replace("toolgen/", f"toolgen/{run}/") if name.startswith("toolgen/") else
                    (name if run == "main" else f"{name}/{run}")] = m
    fine_tuned = [n for n in systems if n.startswith("toolgen/") and "/distractors/" not in n
                  and n.endswith(("retrieval_training", "agent_tuning"))]
    best = max(fine_tuned, key=lambda n: systems[n]["retrieval/ndcg@5"])
    agent = best.rsplit("/", 1)[0] + "/agent_tuning"
    agent = agent if agent in systems else "toolgen/main/agent_tuning"
    pick = lambda n, split="": {k: systems[n][f"retrieval/{split}{k}"] for k in KEYS}
    result = {
        "overall": {"bm25": pick("bm25"), "minilm": pick("minilm"), "base": pick("base"), "toolgen": pick(best)},
        "toolgen_system": best,
        "memorization_accuracy": systems["toolgen/main/tool_memorization"]["memorization/accuracy"],
        "agent_tool_selection_accuracy": systems[agent]["agent/tool_selection_accuracy"],
        "agent_system": agent,
        "distractors": {n: pick(n) for n in systems if "distractors" in n},
        "per_split": {n: {s: pick(n, f"{s}/") for s in SPLITS if f"retrieval/{s}/ndcg@5" in systems[n]} for n in systems},
        "systems": systems,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(result, f, indent=1)
    cols = ["retrieval/ndcg@1", "retrieval/ndcg@3", "retrieval/ndcg@5", "retrieval/mrr", "retrieval/recall@5",
            "memorization/accuracy", "agent/tool_selection_accuracy", "agent/argument_accuracy", "agent/finish_accuracy",
            "agent/completion_rate", "invalid_tool_rate", "invalid_tool_rate_unconstrained"]
    fmt = lambda v: "—" if v is None else f"{v:.3f}"
    lines = ["| system | " + " | ".join(c.split("/")[-1] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(fmt(m.get(c)) for c in cols) + " |" for n, m in systems.items()]
    lines += ["", "Per split, NDCG@5:", "", "| system | " + " | ".join(SPLITS) + " |", "|---" * (len(SPLITS) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(fmt(v.get(s, {}).get("ndcg@5")) for s in SPLITS) + " |"
              for n, v in result["per_split"].items() if v]
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "quality_table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
