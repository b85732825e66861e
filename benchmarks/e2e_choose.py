"""Choose among end-to-end agent runs on validation, scoring every run on the requests that all of them finished.

    python benchmarks/e2e_choose.py --data DATA [--split val] [--source complexfuncbench] [--json OUT] \
        NAME=TRANSCRIPTS [NAME=TRANSCRIPTS ...]

DATA is the prepared folder whose agent_e2e_<split>.json holds the gold requests; each TRANSCRIPTS a transcripts file of
toolgen.evaluate / toolgen.e2e_merge (transcripts/<system>_<source>[_val].json); NAME what the run is called in the
choice (benchmarks/agent_choose_gpu_job.sh: "<variant>:<setting>").

Why the common requests: a time limit cuts the longest requests, and not the same ones in every run. Each run's own
metrics would then be over different requests, and the run that finished fewer (shorter, easier) ones would look
better. Here each run is scored with toolgen.agent_metrics.e2e_metrics on the requests every run finished (a request
without a transcript, or stopped by the deadline, is not finished). The rule, fixed before any run: the highest
call_accuracy, ties to success_rate. Prints a markdown table and the choice; --json writes
{"rule", "source", "common_requests", "held_out", "rows": {NAME: metrics}, "chosen"}.
"""

import argparse
import json

from toolgen.agent_metrics import e2e_metrics
from toolgen.checkpoint import read_json
from toolgen.data.agent_sources import E2E_FILES
from toolgen.e2e_merge import load_requests
from toolgen.transcript import Transcript

RULE = "highest call_accuracy on the requests every run finished, ties to success_rate"
KEYS = ("success_rate", "call_accuracy", "tool_selection_accuracy", "invalid_json_rate", "avg_steps")


def choose(runs, requests):
    """runs {name: [Transcript]}, requests [GoldRequest] of one source -> the result (see the module docstring)."""
    done = {name: {t.uid: t for t in ts if t.finished} for name, ts in runs.items()}
    common = [r for r in requests if all(r.uid in d for d in done.values())]
    if not common:
        raise SystemExit("e2e_choose: no request was finished by every run: nothing to compare")
    rows = {}
    for name, d in done.items():
        m = e2e_metrics([d[r.uid] for r in common], common)
        rows[name] = {k: m[f"e2e/{k}"] for k in KEYS} | {"finished": len(d)}
    chosen = max(rows, key=lambda n: (rows[n]["call_accuracy"], rows[n]["success_rate"]))
    return {"rule": RULE, "common_requests": len(common), "held_out": len(requests), "rows": rows, "chosen": chosen}


def markdown(result, source):
    lines = [f"{source}: {result['common_requests']} of {result['held_out']} requests finished by every run",
             "", "| run | finished | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 2) + "|"]
    for name, row in result["rows"].items():
        mark = " (chosen)" if name == result["chosen"] else ""
        lines.append(f"| {name}{mark} | {row['finished']} | " + " | ".join(f"{row[k]:.3f}" for k in KEYS) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the prepared folder (agent_e2e_<split>.json)")
    p.add_argument("--split", choices=list(E2E_FILES), default="val")
    p.add_argument("--source", default="complexfuncbench")
    p.add_argument("--json", help="also write the result here")
    p.add_argument("runs", nargs="+", metavar="NAME=TRANSCRIPTS")
    args = p.parse_args(argv)
    bad = [r for r in args.runs if "=" not in r]
    if bad:
        p.error(f"{bad[0]}: give NAME=TRANSCRIPTS")
    requests = load_requests(args.data, args.split, error=SystemExit).get(args.source)
    if not requests:
        raise SystemExit(f"{args.data}/{E2E_FILES[args.split]}: no requests of source {args.source!r}")
    runs = {name: [Transcript.from_dict(d) for d in read_json(path, SystemExit)]
            for name, path in (r.split("=", 1) for r in args.runs)}
    result = {**choose(runs, requests), "source": args.source}
    print(markdown(result, args.source))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
