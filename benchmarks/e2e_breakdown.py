"""Where an end-to-end agent run succeeds and where it first goes wrong (the numbers under the agent_e2e table of
results/quality.md).

    python benchmarks/e2e_breakdown.py --data DATA --transcripts FILE [--source complexfuncbench] [--split val]
        [--json OUT]

DATA is the prepared folder (its agent_e2e_test.json, or agent_e2e_val.json, holds the gold requests), FILE a transcripts file that
toolgen.evaluate or toolgen.e2e_merge wrote (transcripts/<system>_<source>.json). Requests without a transcript (cut by
the time limit, or stopped by it: stop_reason "deadline") are counted, not scored. Prints, in markdown:
  - by gold length (gold calls per request: 1-2, 3-4, 5-6, 7+): requests run / held out, and the e2e metrics of
    toolgen.agent_metrics.e2e_metrics over the requests run (success, call accuracy, tool selection);
  - what followed each failed call (after_error: Finish, the same tool again, a call that matched);
  - invalid first answers (e2e/invalid_json_rate's numerator) on tool-call turns and on Finish turns apart;
  - the first failure of each run request: the first step whose call failed, by the replay executor's message
    (an argument, with the parameters named: values differ, missing, unexpected; a call already made; a tool the
    request does not need; arguments invalid after the repair; other), or none;
  - with --reach B1 B2 ... [--reach-order ids-first]: requests by the observation budget their gold calls need
    (toolgen/data/copied_ids.py reach): held out, run, success. Why: a gold argument value that lies only beyond
    the cut of an earlier response can only be guessed.
"""

import argparse
import collections
import json
import re

from toolgen.agent_metrics import e2e_metrics
from toolgen.checkpoint import read_json
from toolgen.data import copied_ids, references
from toolgen.data.agent_sources import E2E_FILES, prepared_observation
from toolgen.e2e_merge import load_requests
from toolgen.tokens import FINISH
from toolgen.transcript import Transcript

BUCKETS = ((1, 2), (3, 4), (5, 6), (7, 10 ** 9))


def bucket(n):
    lo, hi = next(b for b in BUCKETS if b[0] <= n <= b[1])
    return f"{lo}+" if hi == 10 ** 9 else f"{lo}-{hi}"


def first_failure(transcript):
    """(kind, [parameters]) of the first failed call, or ("none", [])."""
    for s in transcript.steps:
        if s.token == FINISH or not s.error:
            continue
        e = s.error
        if e.startswith("invalid arguments after one repair"):
            return "invalid after the repair", []
        if "was already made" in e:
            return "a call already made", []
        if e.startswith("no call named"):
            return "a tool the request does not need", []
        if e.startswith("arguments differ"):
            return "an argument", re.findall(r"'([^']+)'", e.split(":", 1)[1])
        return "other", []
    return "none", []


def by_reach(by_uid, requests, budgets, order="document"):
    """{"none needed" | "<= B" | "beyond B_max": {"held_out", "run", "success_rate"}}: success over the run ones."""
    rows = {}
    for r in requests:
        b = copied_ids.reach(r, budgets, order)
        label = "none needed" if b == 0 else f"<= {b}" if b else f"beyond {max(budgets)}"
        rows.setdefault(label, []).append(r)
    out = {}
    for label in ["none needed"] + [f"<= {b}" for b in sorted(budgets)] + [f"beyond {max(budgets)}"]:
        held = rows.get(label, [])
        run = [r for r in held if r.uid in by_uid]
        out[label] = {"held_out": len(held), "run": len(run)}
        if run:
            out[label]["success_rate"] = e2e_metrics([by_uid[r.uid] for r in run], run)["e2e/success_rate"]
    return out


def breakdown(transcripts, requests, budgets=(), order="document"):
    """{"by_length": {bucket: {...}}, "first_failure": {kind: count}, "parameters": {name: count}, "after_error": {...},
    "invalid_json": {...}[, "by_reach": {...} with budgets]} for the transcripts (any order) against the source's gold
    requests (all held out)."""
    by_uid = {t.uid: t for t in transcripts if t.finished}   # cut by the time limit: not scored
    rows = {}
    for b in dict.fromkeys(bucket(len(r.calls)) for r in sorted(requests, key=lambda r: len(r.calls))):
        held = [r for r in requests if bucket(len(r.calls)) == b]
        run = [r for r in held if r.uid in by_uid]
        m = e2e_metrics([by_uid[r.uid] for r in run], run) if run else {}
        rows[b] = {"held_out": len(held), "run": len(run), **{k: m[f"e2e/{k}"] for k in (
            "success_rate", "call_accuracy", "tool_selection_accuracy") if m}}
    kinds, params = collections.Counter(), collections.Counter()
    for t in by_uid.values():
        kind, names = first_failure(t)
        kinds[kind] += 1
        params.update(names)
    out = {"by_length": rows, "first_failure": dict(kinds.most_common()), "parameters": dict(params.most_common()),
           "after_error": after_error(by_uid.values()), "invalid_json": invalid_json(by_uid.values())}
    if budgets:
        out["by_reach"] = by_reach(by_uid, requests, budgets, order)
    return out


def invalid_json(transcripts):
    """e2e/invalid_json_rate's turns split by kind: {"tool": {"turns", "invalid"}, "finish": {...}}. The rate counts
    Finish's answer too; a model that copies observations into a long final answer is cut at the token limit there
    (the 1.5B run), which says nothing about its tool calls."""
    out = {kind: {"turns": 0, "invalid": 0} for kind in ("tool", "finish")}
    for t in transcripts:
        for s in t.steps:
            if s.answers:
                row = out["finish" if s.token == FINISH else "tool"]
                row["turns"] += 1
                row["invalid"] += not s.valid_json
    return out


def after_error(transcripts):
    """What the model did right after a failed call (an error observation): {"errors", "then_finish", "then_same_tool",
    "then_matched" (the next call got no error), "then_nothing" (the run stopped)}. The data holds no error answers,
    so this is what --recovery-share (toolgen/data/recovery.py) is meant to move."""
    out = collections.Counter(errors=0, then_finish=0, then_same_tool=0, then_matched=0, then_nothing=0)
    for t in transcripts:
        for s, nxt in zip(t.steps, list(t.steps[1:]) + [None]):
            if s.token == FINISH or not s.error:
                continue
            out["errors"] += 1
            if nxt is None:
                out["then_nothing"] += 1
            elif nxt.token == FINISH:
                out["then_finish"] += 1
            else:
                out["then_same_tool"] += nxt.token == s.token
                out["then_matched"] += not nxt.error
    return dict(out)


def markdown(result):
    lines = ["| gold calls | run / held out | success | call accuracy | tool selection |", "|---|---|---|---|---|"]
    for b, r in result["by_length"].items():
        cells = [f"{r[k]:.3f}" if k in r else "-" for k in ("success_rate", "call_accuracy", "tool_selection_accuracy")]
        lines.append(f"| {b} | {r['run']} / {r['held_out']} | " + " | ".join(cells) + " |")
    lines += ["", "After a failed call: " + ", ".join(f"{k} {v}" for k, v in result["after_error"].items()),
              "First failure: " + ", ".join(f"{k} {v}" for k, v in result["first_failure"].items()),
              "Invalid first answers: " + ", ".join(f"{k} turns {v['invalid']} of {v['turns']}"
                                                     for k, v in result["invalid_json"].items()),
              "Parameters in the first argument failures: " + ", ".join(f"{k} {v}" for k, v in
                                                                       result["parameters"].items())]
    if "by_reach" in result:
        lines += ["", "| values needed from earlier responses shown at | run / held out | success |", "|---|---|---|"]
        lines += [f"| {k} | {r['run']} / {r['held_out']} | " + (f"{r['success_rate']:.3f}" if "success_rate" in r
                  else "-") + " |" for k, r in result["by_reach"].items()]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="the prepared folder (agent_e2e_test.json)")
    p.add_argument("--transcripts", required=True, help="a transcripts file of toolgen.evaluate / toolgen.e2e_merge")
    p.add_argument("--source", default="complexfuncbench")
    p.add_argument("--split", choices=list(E2E_FILES), default="test", help="the requests the run was on")
    p.add_argument("--reach", type=int, nargs="*", default=[], metavar="CHARS",
                   help="also group the requests by the observation budget (of these) their gold values need")
    p.add_argument("--reach-order", choices=references.ORDERS,
                   help="the order the budgets are cut in (default: the --data folder's --observation-order)")
    p.add_argument("--json", help="also write the breakdown here")
    args = p.parse_args(argv)
    path = f"{args.data}/{E2E_FILES[args.split]}"
    requests = load_requests(args.data, args.split, error=SystemExit).get(args.source)
    if not requests:
        raise SystemExit(f"{path}: no requests of source {args.source!r}")
    transcripts = [Transcript.from_dict(d) for d in read_json(args.transcripts, SystemExit)]
    order = args.reach_order or prepared_observation(args.data)[1]
    result = breakdown(transcripts, requests, args.reach, order)
    print(markdown(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
