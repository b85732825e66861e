"""Merge the evaluation outputs of benchmarks/quality.sh into benchmarks/results/quality.{json,md}.

    python benchmarks/quality_report.py --main EVAL/metrics.json --synthetic EVAL_SYN/metrics.json \
        --baselines EVAL_BASE/metrics.json [--out benchmarks/results]

`overall` maps each system to {ndcg@1, ndcg@3, ndcg@5, mrr, recall@5} (standard definitions, fractions) on the test
queries; `toolgen` is the best fine-tuned stage by NDCG@5. Per-split values come from the query ids' source files.
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
    p.add_argument("--main", required=True, help="evaluation of the three stages (and the untrained base)")
    p.add_argument("--synthetic", help="evaluation of the run trained with synthetic queries")
    p.add_argument("--baselines", required=True, help="evaluation of BM25 and MiniLM")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    systems = dict(systems_of(args.baselines))
    for name, m in systems_of(args.main).items():
        systems[name.replace("toolgen/", "toolgen/main/")] = m
    if args.synthetic:
        for name, m in systems_of(args.synthetic).items():
            systems[name.replace("toolgen/", "toolgen/synthetic_queries/")] = m
    fine_tuned = [n for n in systems if n.startswith("toolgen/") and n.endswith(("retrieval_training", "agent_tuning"))]
    best = max(fine_tuned, key=lambda n: systems[n]["retrieval/ndcg@5"])
    pick = lambda n, split="": {k: systems[n][f"retrieval/{split}{k}"] for k in KEYS}
    main_agent = systems["toolgen/main/agent_tuning"]
    result = {
        "overall": {"bm25": pick("bm25"), "minilm": pick("minilm"), "base": pick("base"), "toolgen": pick(best)},
        "toolgen_system": best,
        "memorization_accuracy": systems["toolgen/main/tool_memorization"]["memorization/accuracy"],
        "agent_tool_selection_accuracy": main_agent["agent/tool_selection_accuracy"],
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
