"""metrics.json, metrics.md and the plots (NDCG@k per system; training loss per stage from TensorBoard logs)."""

import glob
import os

from toolgen import metrics
from toolgen.checkpoint import atomic_folder, write_json

DEFINITIONS = {
    "retrieval/ndcg@k": "standard NDCG@k, binary relevance; the ideal ranking counts ALL relevant APIs, also those not "
                        "retrieved or missing from the catalog",
    "retrieval/ndcg@k_retrieved_only": "ToolGen's script variant: ideal ranking from the retrieved top-k only (inflated)",
    "retrieval/mrr": "mean reciprocal rank of the first relevant API within the top 100",
    "retrieval/recall@5": "share of a query's relevant APIs in its top 5, averaged over queries",
    "memorization/accuracy": "constrained top-1 tool token from the API's documentation == its own token, over the catalog",
    "memorization/f1": "macro-F1 over tools of those top-1 predictions (each tool token a class)",
    "memorization/new_tools_accuracy": "memorization/accuracy over the tools an add_tools stage added or re-documented "
                                       "(its stage.json's tools_added + tools_replaced)",
    "agent/tool_selection_accuracy": "right tool token at each non-final action step, true history given",
    "agent/tool_selection_accuracy_any_order": "the same, counted right when the token is any of the reference's tools "
                                               "from that step on (calls not made yet, in any order)",
    "agent/argument_accuracy": "generated arguments parse as a JSON object, have the required parameters and match every "
                               "reference value (case/space-folded); steps whose reference was truncated are not scored",
    "agent/finish_accuracy": "share of trajectories where Finish is chosen at the last action step and at no other",
    "agent/completion_rate": "share of trajectories where every tool choice, every argument and Finish are right",
    "<system>+prior": "the system's tool log-probabilities fused with a BM25/dense prior over the documentation "
                      "(toolgen/retrieval.py: rrf 1/(k+rank_model) + w*sum 1/(k+rank_prior), or weighted log p + "
                      "w*z(prior)); prior, fusion, k, w chosen on retrieval_val.json, recorded under prior/choice",
    "invalid_tool_rate": "share of tool predictions that are not a real tool, under constrained decoding",
    "invalid_tool_rate_unconstrained": "the same with an argmax over the whole vocabulary",
}
NOT_MEASURED = {"response relevance (human-evaluated)": "not measured: it needs human raters; no number is given"}
COLUMNS = ["retrieval/ndcg@1", "retrieval/ndcg@3", "retrieval/ndcg@5", "retrieval/mrr", "retrieval/recall@5",
           "memorization/accuracy", "memorization/f1", "agent/tool_selection_accuracy", "agent/argument_accuracy",
           "agent/finish_accuracy", "agent/completion_rate", "invalid_tool_rate_unconstrained"]
OPTIONAL_COLUMNS = ["memorization/new_tools_accuracy", "agent/tool_selection_accuracy_any_order"]


def training_losses(runs_dir):
    """{run/stage tag: [(step, loss)]} read back from the TensorBoard event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    curves = {}
    for events in sorted(glob.glob(os.path.join(runs_dir or "", "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(events)
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if tag.endswith("/loss"):
                curves.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return curves


def _plots(out_dir, rankings, sets, curves):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    if rankings:   # none with --e2e-only, or in a merge of end-to-end shards (toolgen/e2e_merge.py)
        rows = sets["retrieval_test"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, by_set in rankings.items():
            ranked = by_set["retrieval_test"]
            ys = [metrics.mean_ndcg(ranked, [row[1] for row in rows], k) for k in range(1, 11)]
            ax.plot(range(1, 11), ys, marker="o", label=name)
        ax.set(xlabel="k", ylabel="NDCG@k (standard)", title="Retrieval on retrieval_test.json")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "ndcg_at_k.png"), dpi=120)
        plt.close(fig)
    if curves:
        fig, ax = plt.subplots(figsize=(6, 4))
        for tag, points in sorted(curves.items()):
            points.sort()
            ax.plot([s for s, _ in points], [v for _, v in points], label=tag)
        ax.set(xlabel="optimizer step", ylabel="loss per target token", title="Training loss per stage", yscale="log")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "training_loss.png"), dpi=120)
        plt.close(fig)


def _fmt(v):
    return "—" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def write_report(out_dir, systems, rankings, sets, runs_dir=None, choices=None, extra=None):
    """metrics.json, metrics.md and the plots, as one atomic folder: a report is complete or absent.
    choices: what was chosen on the validation split (baselines' document views), recorded beside the numbers.
    extra: {relative path: JSON object} written beside them (e.g. the agent transcripts)."""
    curves = training_losses(runs_dir) if runs_dir and os.path.isdir(runs_dir) else {}
    report = {"systems": systems, "definitions": DEFINITIONS, "not_measured": NOT_MEASURED,
              "query_sets": {name: len(rows) for name, rows in sets.items()}, "choices": choices or {}}
    with atomic_folder(out_dir) as tmp:
        write_json(os.path.join(tmp, "metrics.json"), report)
        _markdown(tmp, report, systems)
        _plots(tmp, rankings, sets, curves)
        for path, obj in (extra or {}).items():
            os.makedirs(os.path.dirname(os.path.join(tmp, path)), exist_ok=True)
            write_json(os.path.join(tmp, path), obj, indent=None)


def _markdown(out_dir, report, systems):
    # a column that only some evaluations have (an add_tools stage's new tools) is shown when a system has it
    columns = COLUMNS + [c for c in OPTIONAL_COLUMNS if any(c in m for m in systems.values())]
    lines = ["# Evaluation", "", f"Query sets: {report['query_sets']}", "",
             "| system | " + " | ".join(c.split("/")[-1] if c.startswith("retrieval") else c for c in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for name, m in systems.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c)) for c in columns) + " |")
    extra = sorted({k.split("/")[1] for m in systems.values() for k in m if k.startswith("queries/")})
    for set_name in extra:
        lines += ["", f"## --queries {set_name}", "", "| system | ndcg@1 | ndcg@3 | ndcg@5 | mrr | recall@5 | missing from catalog |",
                  "|---|---|---|---|---|---|---|"]
        for name, m in systems.items():
            keys = ["ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5", "relevant_missing_from_catalog"]
            lines.append(f"| {name} | " + " | ".join(_fmt(m.get(f"queries/{set_name}/{k}")) for k in keys) + " |")
    lines += ["", "Retrieval by BM25 and MiniLM ranks the API documentation texts; the models rank tool tokens by their "
              "log-probability at the answer position (constrained to real tools).", "",
              "Not measured: response relevance (human-evaluated) — it needs human raters, so no number is given.", "",
              "## Definitions", ""] + [f"- `{k}`: {v}" for k, v in DEFINITIONS.items()]
    with open(os.path.join(out_dir, "metrics.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
