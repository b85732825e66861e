"""ComplexFuncBench and NESTFUL in a prepared folder, beside ToolBench, in one tool-token space.

For each source (read by complexfuncbench.py / nestful.py; the formats are described there):
  - its specs are catalog entries (prepare adds them before naming tokens: memorization, tool_tokens.json);
  - its requests are split by request text with prepare's seed and test fraction (gold.split);
  - a training request gives retrieval pairs (the request -> each API its calls use, once) and an agent trajectory
    (gold.to_trajectory: arguments resolved for ComplexFuncBench, references kept for NESTFUL, the recorded response
    cut to the observation budget as the observation, then Finish);
  - a held-out request gives one record of agent_e2e_test.json (what a replay evaluation needs, see e2e_record) and
    one of retrieval_test_agent_sources.json (retrieval_test.json's format, query_id "<source>_<uid>"); neither goes
    to retrieval_test.json or agent_test.json, which stay ToolBench's;
  - a validation request (prepare's val_fraction of the training requests, gold.carve_val) gives one record of
    agent_e2e_val.json and nothing to train on: the agent's settings are chosen there, never on test.

Ambiguous references (ComplexFuncBench: 44, where a path without list index meets several different values) are kept
and flagged: in training the arguments of such a call are context only (no loss: the right value is not known), in
agent_e2e_test.json the call lists them under "ambiguous_references".
"""

import dataclasses
import json
import os

from toolgen.data import complexfuncbench, copied_ids, gold, nestful, quality, recovery, references, stages
from toolgen.data.toolbench import DataError
from toolgen.tokens import FINISH

READERS = {"complexfuncbench": complexfuncbench, "nestful": nestful}   # prepare's flag name -> reader module
E2E_FILES = {"test": "agent_e2e_test.json", "val": "agent_e2e_val.json"}   # the replay evaluation's requests, by split


# Per-source request counts of prepare_report.json "sources", before quality.COUNTS' trajectory counts.
REQUEST_COUNTS = ("apis", "requests", "requests_dropped", "answers_dropped", "train_requests", "val_requests",
                  "test_requests", "retrieval_pairs", "ambiguous_references", "train_calls_with_ambiguous_references",
                  "val_calls_with_ambiguous_references", "test_calls_with_ambiguous_references", "recovery_examples",
                  "train_calls_copying_unseen_ids")


def prepared_observation(data_dir):
    """(characters, order): how data_dir's agent examples cut a response (prepare --observation-budget and
    --observation-order, in its prepare_report.json). Evaluated on the folder it trained on, the replay loop then
    shows what the agent stage was trained to see; the stage's own folder is not looked up here (toolset.py's
    trained_observation does that, for toolgen-agent). A folder written before --observation-order existed: the
    document's order."""
    try:
        with open(os.path.join(data_dir, "prepare_report.json"), encoding="utf-8") as f:
            report = json.load(f)
        return (int(report.get("observation_budget") or gold.OBSERVATION_BUDGET),
                report.get("observation_order") or "document")
    except (OSError, ValueError, TypeError, AttributeError):   # no report, or not one prepare wrote: the defaults
        return gold.OBSERVATION_BUDGET, "document"


def source_tokens(tools):
    """{source: its tool tokens}: an agent source's APIs are the catalog entries of its category (data/gold.py)."""
    out = {}
    for token, entry in tools.items():
        out.setdefault(entry["category"].lower(), set()).add(token)
    return out


def e2e_prefix(split):
    """The metric prefix of an end-to-end run on a split: agent_e2e/<source>/... on test, agent_e2e_val/... on val."""
    return "agent_e2e" if split == "test" else f"agent_e2e_{split}"


def read_sources(roots):
    """{flag name: folder, or True for the installed data_v1 package} -> {flag name: gold.Source}; a source not
    asked for (None/False) is left out. What is not found is a DataError naming the flag."""
    sources = {}
    for name, root in roots.items():
        if not root:
            continue
        folder = gold.installed_root() if root is True else root
        if folder is None:
            raise DataError(f"--{name}: the data_v1 package (pip install nestful-wrapper==0.1.7) is not installed; "
                            f"give the folder that holds its files: --{name} DIR")
        if not os.path.isdir(folder):
            raise DataError(f"--{name} {folder}: not a folder (give the data_v1 folder of nestful-wrapper 0.1.7)")
        try:
            gold.source_files(folder, READERS[name].FILES)
        except DataError as e:
            raise DataError(f"--{name} {folder}: {e}") from None
        sources[name] = READERS[name].read(folder)   # bad specs / records: DataError naming file and record
    return sources


def merged_apis(toolbench_apis, sources):
    """{key: Api} of ToolBench's catalog and every source's specs; ToolBench's entry wins a key both have (the
    sources' categories, "ComplexFuncBench" and "NESTFUL", make that unlikely)."""
    apis = dict(toolbench_apis)
    for source in sources.values():
        for api in source.apis:
            apis.setdefault(api.key, api)
    return apis


def _resolved(trajectory, request, keys, apis, names):
    """[(token, api, step)] as prepare builds it for ToolBench; a call with an ambiguous reference is marked so that
    its arguments carry no loss (quality.arguments_complete)."""
    out = []
    for step, call in zip(trajectory.steps, request.calls):
        step.ambiguous = bool(call.ambiguous)
        out.append((names[keys[step.function]], apis[keys[step.function]], step))
    return out + [(FINISH, None, trajectory.steps[-1])]


def finish_arguments(request):
    """What the Finish step carries: the answer mapping where the data has one (NESTFUL's var_result), else only
    the return type (ComplexFuncBench records no answer text; none is made up, and it carries no loss)."""
    finish = {"return_type": "give_answer"}
    if request.answer is not None:
        finish["final_answer"] = json.dumps(request.answer, ensure_ascii=False)
    return finish


def e2e_record(name, request, keys, names, apis):
    """One held-out request of agent_e2e_test.json: everything a replay evaluation needs (README: Outputs)."""
    calls = []
    for c in request.calls:
        api = apis[keys[c.name]]
        calls.append({"name": c.name, "token": names[api.key], "tool": api.tool, "api": api.api, "label": c.label,
                      "arguments": c.arguments, "resolved_arguments": c.resolved, "has_response": c.has_response,
                      "response": c.response if c.has_response else None,
                      "used_paths": [list(p) for p in c.used_paths], "ambiguous_references": list(c.ambiguous)})
    return {"source": name, "uid": request.uid, "query_id": f"{name}_{request.uid}", "request": request.text,
            "tools": list(dict.fromkeys(c["token"] for c in calls)), "calls": calls, "answer": request.answer,
            "finish": finish_arguments(request), "origin": request.source}


def e2e_requests(records):
    """agent_e2e_{test,val}.json records -> {source: [GoldRequest]}: the inverse of e2e_record, for the replay
    evaluation."""
    out = {}
    for r in records:
        calls = [gold.GoldCall(c["name"], c["arguments"], c["resolved_arguments"], c["response"], c["has_response"],
                               c.get("label", ""), [tuple(p) for p in c.get("used_paths", [])],
                               list(c.get("ambiguous_references", []))) for c in r["calls"]]
        out.setdefault(r["source"], []).append(gold.GoldRequest(r["uid"], r["request"], calls, r["answer"], r["origin"]))
    return out


def _count_requests(counts, source, train, val, test):
    counts["apis"] = len(source.apis)
    dropped = sum(not reason.startswith("answer_dropped_") for reason, _ in source.skips)
    counts["requests"] = len(source.requests) + dropped
    counts["requests_dropped"] = dropped
    counts["answers_dropped"] = len(source.skips) - dropped
    counts["train_requests"], counts["val_requests"], counts["test_requests"] = len(train), len(val), len(test)
    counts["ambiguous_references"] = sum(
        t in c.ambiguous for r in source.requests for c in r.calls for _, _, t in references.references(c.arguments))
    for side, requests in (("train", train), ("val", val), ("test", test)):
        counts[f"{side}_calls_with_ambiguous_references"] = sum(bool(c.ambiguous) for r in requests for c in r.calls)


def source_outputs(name, source, names, options, report):
    """The examples and records of one source. options: seed, test_fraction, val_fraction, observation_budget,
    observation_order, min_complete, input_params (stages.api_input_doc's params), recovery_share (recovery.py).
    Returns {"retrieval_training", "agent_tuning", "agent_e2e_test", "agent_e2e_val",
    "retrieval_test_agent_sources"}: lists."""
    for reason, detail in source.skips:
        report.skip(reason, detail)
    keys, apis = source.keys, {api.key: api for api in source.apis}
    train, test = gold.split(source.requests, options["seed"], options["test_fraction"])
    train, val = gold.carve_val(train, options["seed"], options.get("val_fraction", 0.0))
    counts = report.sources.setdefault(name, quality.new_counts(REQUEST_COUNTS + quality.COUNTS))
    _count_requests(counts, source, train, val, test)
    retrieval = [{**stages.retrieval_example(r.text, names[k]), "source": name}
                 for r in train for k in gold.to_query(r, keys).relevant]
    counts["retrieval_pairs"] = len(retrieval)
    budget, order = options["observation_budget"], options.get("observation_order", "document")
    # calls whose id (vehicle_id, hotel_id...) no observation of theirs shows: taught to invent it (copied_ids.py)
    counts["train_calls_copying_unseen_ids"] = sum(len({k for k, _ in copied_ids.unseen(r, budget, order)})
                                                   for r in train)
    trajectories = []
    for r in train:
        t = gold.to_trajectory(r, budget, order=order)
        trajectories.append((_resolved(t, r, keys, apis, names), False, (t, r)))
    selected = quality.select(trajectories, options["min_complete"], counts, report)
    with_attempts, counts["recovery_examples"] = recovery.add_attempts(
        [(resolved, r) for resolved, _, (_, r) in selected], options.get("recovery_share", 0.0), options["seed"], name)
    agent = [{**stages.agent_example(t, resolved, options.get("input_params", False)), "source": name}
             for resolved, (_, _, (t, _)) in zip(with_attempts, selected)]
    retrieval_test = [stages.retrieval_test_record(dataclasses.replace(gold.to_query(r, keys), uid=f"{name}_{r.uid}"),
                                                   names) for r in test]
    return {"retrieval_training": retrieval, "agent_tuning": agent,
            "agent_e2e_test": [e2e_record(name, r, keys, names, apis) for r in test],
            "agent_e2e_val": [e2e_record(name, r, keys, names, apis) for r in val],
            "retrieval_test_agent_sources": retrieval_test}


def all_source_outputs(sources, names, options, report):
    """source_outputs of every source, concatenated per kind, in the order of READERS."""
    out = {"retrieval_training": [], "agent_tuning": [], "agent_e2e_test": [], "agent_e2e_val": [],
           "retrieval_test_agent_sources": []}
    for name in READERS:
        if name in sources:
            for kind, items in source_outputs(name, sources[name], names, options, report).items():
                out[kind] += items
    return out
