"""Raw ToolBench data -> the three stage files, the held-out test files, the tool vocabulary and a report.

    python -m toolgen.prepare --toolbench DIR --out DIR      (console: toolgen-prepare)
    ... --complexfuncbench [DIR] --nestful [DIR]             (agent sources beside ToolBench: data/agent_sources.py)

With no --toolbench the shipped sample (toolgen/data/sample/) is used, so this runs offline.
"""

import argparse
import collections
import glob
import json
import os
import sys

from toolgen import prepare_views, query_writer
from toolgen.checkpoint import atomic_folder
from toolgen.data import SAMPLE_DIR, agent_sources, gold, quality, references, stages, views as view_lib
from toolgen.data.gold import is_test, is_val
from toolgen.data.toolbench import (Catalog, DataError, api_from_record, read_api_jsonl, read_queries, read_text,
                                    read_tools_dir, read_trajectories, resolve_queries)
from toolgen.tokens import FINISH, tool_token_names

OUTPUT_FILES = ("tool_memorization.json", "retrieval_training.json", "agent_tuning.json", "retrieval_test.json",
                "agent_test.json", "tool_tokens.json", "prepare_report.json", "retrieval_val.json",
                "agent_e2e_test.json", "agent_e2e_val.json",
                "retrieval_test_agent_sources.json")   # these three: --complexfuncbench/--nestful
CACHE_FILES = (query_writer.CACHE_FILE,)   # written only with the llm view; carried from the old --out to the new
# What --toolbench DIR is searched for, in DIR and in DIR/data (a ToolBench download keeps everything under data/).
LAYOUTS = ("ToolBench raw (toolenv/tools/<Category>/<tool>.json, instruction/*.json, answer/**/*.json)",
           "StableToolBench (solvable_queries/test_instruction/*.json)",
           "a JSON Lines API catalog (catalog.jsonl, else the only *.jsonl file)")


def detect_layout(root):
    """Every input LAYOUTS names, found under root or root/data.

    StableToolBench's solvable_queries_example/ is not read: its 3 queries are copies of test_instruction's (same file
    name, same ids), so they would be counted twice. test_query_ids/ holds id lists, not queries.
    """
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (--toolbench takes a folder; see README: input layouts)")
    found = {"tools_dir": None, "catalogs": [], "queries": [], "trajectories": []}
    for base in (root, os.path.join(root, "data")):
        if found["tools_dir"] is None and os.path.isdir(os.path.join(base, "toolenv", "tools")):
            found["tools_dir"] = os.path.join(base, "toolenv", "tools")
        named = os.path.join(base, "catalog.jsonl")
        found["catalogs"] += [named] if os.path.isfile(named) else sorted(glob.glob(os.path.join(base, "*.jsonl")))
        for pattern in (("instruction", "*.json"), ("solvable_queries", "test_instruction", "*.json")):
            found["queries"] += sorted(glob.glob(os.path.join(base, *pattern)))
        found["trajectories"] += sorted(glob.glob(os.path.join(base, "answer", "**", "*.json"), recursive=True))
    return found


def _expand(paths):
    out = []
    for p in paths:
        out += sorted(glob.glob(os.path.join(p, "**", "*.json"), recursive=True)) if os.path.isdir(p) else [p]
    return out


def find_inputs(toolbench=None, tools_dir=None, api_catalog=None, queries=(), trajectories=()):
    """The input files: those given by flag, the rest from detect_layout(toolbench). A catalog or tool folder given by
    flag replaces both found ones; of the two, the catalog file is the catalog."""
    nothing = {"tools_dir": None, "catalogs": [], "queries": [], "trajectories": []}
    found = detect_layout(toolbench) if toolbench else nothing
    if not (api_catalog or tools_dir):
        if len(found["catalogs"]) > 1:
            raise DataError(f"{toolbench}: {len(found['catalogs'])} JSON Lines files and no catalog.jsonl, which is "
                            f"the catalog? ({', '.join(found['catalogs'])}); name it with --api-catalog")
        api_catalog, tools_dir = (found["catalogs"] or [None])[0], found["tools_dir"]
    inputs = {"tools_dir": tools_dir, "api_catalog": api_catalog, "queries": list(queries) or found["queries"],
              "trajectories": _expand(trajectories) or found["trajectories"]}
    if not (api_catalog or tools_dir or inputs["queries"]):
        raise DataError(f"{toolbench}: no tool folder, API catalog or query file found; looked in it and in its data/ "
                        f"folder for: {'; '.join(LAYOUTS)}")
    return inputs


def describe_inputs(inputs):
    """One line per kind of input, printed before the work starts: a wrong folder shows at once."""
    def files(kind, paths):
        if len(paths) == 1:
            return f"1 {kind} file: {paths[0]}"
        return f"{len(paths)} {kind} files" + (f" under {os.path.commonpath(paths)}" if paths else "")
    catalog, tools = inputs["api_catalog"], inputs["tools_dir"]
    unused = " (not used: the catalog file is the catalog)" if catalog and tools else ""
    return [f"catalog file: {catalog or 'none'}", f"tool folder: {tools or 'none'}{unused}",
            files("query", inputs["queries"]) + ("" if catalog or tools else " (the catalog: their api_lists)"),
            files("trajectory", inputs["trajectories"])]


class Report:
    def __init__(self, strict):
        self.strict, self.read, self.written = strict, collections.Counter(), {}
        self.skipped, self.examples = collections.Counter(), collections.defaultdict(list)
        self.sources = {}   # source name -> Counter of trajectories and steps (quality.COUNTS; agent_sources)

    def skip(self, reason, detail):
        if self.strict:
            raise DataError(f"{detail}: {reason.replace('_', ' ')} (skipping is off under --strict)")
        self.skipped[reason] += 1
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(detail)


def _read_catalog(api_catalog, tools_dir, raw_queries):
    """(apis, source): the catalog file, else the tool folder, else the union of the queries' api_lists."""
    if api_catalog:
        return read_api_jsonl(api_catalog), api_catalog
    if tools_dir:
        return read_tools_dir(tools_dir), tools_dir
    return [api_from_record(a, f"{p} record {i} api_list[{j}]") for p, _, recs in raw_queries
            for i, r in enumerate(recs) for j, a in enumerate(r.get("api_list", []))], "queries' api_lists"


def _retrieval_examples(raw_queries, catalog, names, seed, test_fraction, report, val_fraction=0.0):
    """One training example per (training query, relevant API), as the ToolGen paper does; test and validation
    queries as records (the same format)."""
    train, test, val = [], [], []
    for path, stem, records in raw_queries:
        for q in resolve_queries(stem, records, catalog, path):
            for label in q.missing:
                report.skip("relevant_api_not_in_catalog", f"{path} query {q.uid}: {label}")
            if not q.relevant and not q.missing:
                report.skip("query_without_relevant_apis", f"{path} query {q.uid}")
                continue
            if is_test(q.text, seed, test_fraction):
                test.append(stages.retrieval_test_record(q, names))
            elif is_val(q.text, seed, val_fraction):
                val.append(stages.retrieval_test_record(q, names))
            elif q.relevant:
                train += [stages.retrieval_example(q.text, names[k]) for k in q.relevant]
    return train, test, val


def _resolve_steps(trajectory, catalog, names):
    """[(token, api or None, step)] up to the first unknown function; returns (resolved, unknown function or None)."""
    resolved = []
    for step in trajectory.steps:
        if step.function == "Finish":
            resolved.append((FINISH, None, step))
        elif step.function in catalog.by_function:
            key = catalog.by_function[step.function]
            resolved.append((names[key], catalog.apis[key], step))
        else:
            return resolved, step.function
    return resolved, None


def _agent_examples(trajectory_files, catalog, names, seed, test_fraction, report, min_complete=0.0, params=False):
    """One trajectory per query text (the most complete, then the longest: quality.rank); unknown functions and
    unfinished ones skipped; quality.select drops those below min_complete and incomplete ones of the test split."""
    by_query = {}
    for path in trajectory_files:
        found, skips = read_trajectories(path)
        report.read["trajectory_files"] += 1
        report.read["trajectories"] += len(found) + len(skips)
        for reason, detail in skips:
            report.skip(reason, detail)
        for t in found:
            resolved, unknown = _resolve_steps(t, catalog, names)
            if unknown:
                report.skip("trajectory_calls_unknown_function", f"{t.source}: {unknown}")
            elif not resolved or resolved[-1][0] != FINISH:
                report.skip("trajectory_without_finish", t.source)
            elif not t.query:
                report.skip("trajectory_without_query", t.source)
            elif t.query in by_query and quality.rank(by_query[t.query][1]) >= quality.rank(resolved):
                report.skip("duplicate_trajectory_for_query", t.source)
            else:
                if t.query in by_query:
                    report.skip("duplicate_trajectory_for_query", by_query[t.query][0].source)
                by_query[t.query] = (t, resolved)
    candidates = [(resolved, is_test(text, seed, test_fraction), t) for text, (t, resolved) in sorted(by_query.items())]
    counts = report.sources.setdefault("toolbench", quality.new_counts())
    train, test = [], []
    for resolved, held_out, t in quality.select(candidates, min_complete, counts, report):
        (test if held_out else train).append(stages.agent_example(t, resolved, params))
    return train, test


def _tool_tokens(apis, names, collisions, extra_tokens, input_doc="names"):
    """tool_tokens.json. Distractors (e.g. ToolGen's 46,984 token names): in the vocabulary and among the candidates,
    never a target."""
    distractors = []
    if extra_tokens:
        known = set(names.values()) | {FINISH}
        distractors = sorted({t.strip() for t in read_text(extra_tokens).splitlines() if t.strip()} - known)
        bad = [t for t in distractors if not (t.startswith("<<") and t.endswith(">>"))]
        if bad:
            raise DataError(f"{extra_tokens}: not a tool token: {bad[0]!r}")
    return {"tokens": [names[k] for k in sorted(apis)] + distractors + [FINISH],
            "distractors": len(distractors), "input_doc": input_doc,
            "tools": {names[k]: {"category": k[0], "tool": k[1], "api": k[2],
                                 "documentation": stages.api_documentation(apis[k]),
                                 # what the agent shows before the arguments turn, as in training
                                 "input_doc": json.loads(stages.api_input_doc(apis[k], input_doc == "params"))}
                      for k in sorted(apis)},
            "collisions": collisions}


def prepare(toolbench=None, tools_dir=None, api_catalog=None, queries=(), trajectories=(), test_fraction=0.2,
            seed=0, strict=False, extra_tokens=None, synthetic_queries=0, complexfuncbench=None, nestful=None,
            observation_budget=gold.OBSERVATION_BUDGET, min_complete=0.0, val_fraction=0.1, views=(), multi_rounds=1,
            writer=None, writer_cache=(), agent_val_fraction=None, input_doc="names", recovery_share=0.0,
            observation_order="document"):
    """Everything prepare writes, as {file name: object}. Nothing touches the disk here.

    complexfuncbench / nestful: a data_v1 folder, or True for the installed package (agent_sources.py).
    input_doc: what the arguments turn shows of the parameters (stages.INPUT_DOCS), in training and in tool_tokens.json.
    recovery_share: the share of the agent sources' training trajectories given a failed attempt (data/recovery.py)."""
    inputs = find_inputs(toolbench, tools_dir, api_catalog, queries, trajectories)
    report = Report(strict)
    raw_queries, query_counts = [], {}
    for path in inputs["queries"]:
        stem, records, skips = read_queries(path)
        query_counts[f"queries:{path}"] = len(records) + len(skips)
        for reason, detail in skips:
            report.skip(reason, detail)
        raw_queries.append((path, stem, records))
    apis, catalog_source = _read_catalog(inputs["api_catalog"], inputs["tools_dir"], raw_queries)
    catalog = Catalog(apis)
    report.read["apis"] = len(apis)
    report.read.update(query_counts)
    if not catalog.apis:
        raise DataError(f"{catalog_source}: the catalog is empty")
    # The agent sources' specs join the catalog before tokens are named: one tool-token space. ToolBench's queries
    # and trajectories are still resolved in ToolBench's own catalog (its function names).
    sources = agent_sources.read_sources({"complexfuncbench": complexfuncbench, "nestful": nestful})
    all_apis = agent_sources.merged_apis(catalog.apis, sources)
    names, collisions = tool_token_names(list(all_apis))

    # Stage 1: every API of the catalog, also those no query names.
    memorization = [stages.memorization_example(all_apis[k], names[k]) for k in sorted(all_apis)]
    retrieval_train, retrieval_test, retrieval_val = _retrieval_examples(raw_queries, catalog, names, seed,
                                                                         test_fraction, report, val_fraction)
    # Optional: queries written from the catalog (never from a query), so that retrieval training also covers the
    # tools no training query names (views: toolgen/data/views.py; --synthetic-queries N = the views name[,ask]).
    views = tuple(v for v in view_lib.VIEWS if v in set(views) | set(view_lib.synthetic_query_views(synthetic_queries)))
    view_counts = writer_records = writer_report = None
    if views:
        held_out = {view_lib.normalize(r["messages"][0]["content"]) for r in retrieval_test + retrieval_val}
        examples, view_counts, writer_records, writer_report = prepare_views.view_examples(
            Catalog(list(all_apis.values())), names, views, seed, multi_rounds, writer, writer_cache, held_out, report)
        retrieval_train += examples
        report.read["synthetic_queries"] = sum(c["queries"] for c in view_counts.values())
    agent_train, agent_test = _agent_examples(inputs["trajectories"], catalog, names, seed, test_fraction, report,
                                              min_complete, input_doc == "params")
    options = {"seed": seed, "test_fraction": test_fraction, "observation_budget": observation_budget,
               "observation_order": observation_order,
               "val_fraction": val_fraction if agent_val_fraction is None else agent_val_fraction,
               "min_complete": min_complete, "input_params": input_doc == "params", "recovery_share": recovery_share}
    extra = agent_sources.all_source_outputs(sources, names, options, report)
    retrieval_train += extra["retrieval_training"]
    agent_train += extra["agent_tuning"]

    outputs = {"tool_memorization.json": memorization, "retrieval_training.json": retrieval_train,
               "agent_tuning.json": agent_train, "retrieval_test.json": retrieval_test,
               "agent_test.json": agent_test, "retrieval_val.json": retrieval_val,
               "tool_tokens.json": _tool_tokens(all_apis, names, collisions, extra_tokens, input_doc),
               "agent_e2e_test.json": extra["agent_e2e_test"], "agent_e2e_val.json": extra["agent_e2e_val"],
               "retrieval_test_agent_sources.json": extra["retrieval_test_agent_sources"]}
    if writer_records is not None:
        outputs[query_writer.CACHE_FILE] = writer_records
    outputs["prepare_report.json"] = {
        "catalog_source": catalog_source, "seed": seed, "test_fraction": test_fraction, "val_fraction": val_fraction,
        "agent_val_fraction": options["val_fraction"],
        "min_complete": min_complete, "observation_budget": observation_budget,
        "observation_order": observation_order, "input_doc": input_doc, "recovery_share": recovery_share,
        "sources": {name: dict(counts) for name, counts in report.sources.items()},
        **({"views": view_counts} if views else {}), **({"query_writer": writer_report} if writer_report else {}),
        "read": dict(report.read), "written": {name: len(obj) if name != "tool_tokens.json" else len(obj["tokens"])
                                               for name, obj in outputs.items()},
        "skipped": dict(report.skipped), "skipped_examples": dict(report.examples),
        "token_collisions": len(collisions)}
    return outputs


def check_out_dir(out_dir):
    """The output folder is replaced whole, so it may hold only what prepare writes: refuse one with anything else in
    it (an --out pointing at the raw data or at a home folder would be deleted)."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: --out is not a folder")
    if os.path.isdir(out_dir):
        others = sorted(n for n in os.listdir(out_dir)
                        if n not in OUTPUT_FILES + CACHE_FILES and not n.startswith(".prepare-"))
        if others:
            raise DataError(f"{out_dir}: --out holds files prepare does not write ({', '.join(others[:3])}"
                            f"{', ...' if len(others) > 3 else ''}); the folder is replaced whole, so give a new one")


def write_atomically(outputs, out_dir):
    """Write every file into a temporary folder beside out_dir, then swap the whole folder in (atomic_folder): a failed
    run leaves the old out_dir as it was, never old and new files mixed."""
    check_out_dir(out_dir)
    with atomic_folder(out_dir) as tmp:
        for name, obj in outputs.items():
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                if name.endswith(".jsonl"):   # the query writer's cache: one record a line
                    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in obj)
                else:
                    json.dump(obj, f, ensure_ascii=False, indent=None if isinstance(obj, list) else 1)


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: not a fraction between 0 and 1")
    return value


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: not a positive number of characters")
    return value


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--toolbench", default=None, help="a ToolBench or StableToolBench folder, or one with a "
                                                     "catalog.jsonl (README: input layouts); default: the shipped sample")
    p.add_argument("--out", required=True, help="folder for the stage files (replaced whole)")
    p.add_argument("--tools-dir", help="tool documentation folder (<Category>/<tool>.json)")
    p.add_argument("--api-catalog", help="API catalog as JSON Lines; when given it is the catalog")
    p.add_argument("--queries", action="append", default=[], help="query file (G1_query.json style); repeatable")
    p.add_argument("--trajectories", action="append", default=[], help="trajectory file or folder; repeatable")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="turn every skip into an error")
    p.add_argument("--extra-tokens", help="a file of tool-token names (one a line) added as distractors")
    p.add_argument("--synthetic-queries", nargs="?", type=int, const=1, default=0, choices=[0, 1, 2], metavar="VIEWS",
                   help="add retrieval examples per API, their queries written from the API's documentation: 1 (the "
                        "default when given) names the tool; 2 adds a request without the tool's name")
    p.add_argument("--complexfuncbench", nargs="?", const=True, default=None, metavar="DIR",
                   help="add ComplexFuncBench (specs, requests, trajectories; README: agent sources) from DIR, a "
                        "data_v1 folder; default: the installed nestful-wrapper package")
    p.add_argument("--nestful", nargs="?", const=True, default=None, metavar="DIR",
                   help="add NESTFUL from DIR, a data_v1 folder; default: the installed nestful-wrapper package")
    p.add_argument("--observation-budget", type=_positive_int, default=gold.OBSERVATION_BUDGET, metavar="CHARS",
                   help="characters of a recorded response kept as an agent-source observation (the paths later "
                        f"calls read always survive; default {gold.OBSERVATION_BUDGET})")
    p.add_argument("--observation-order", choices=references.ORDERS, default="document", help="what fills it first: "
                   "the response's own order (default) or ids-first (every id-like field first: README, Agent loop)")
    p.add_argument("--min-complete", type=_fraction, default=0.0, metavar="FRACTION",
                   help="drop trajectories whose share of tool calls with complete arguments is below FRACTION "
                        "(0..1; default 0 keeps all; counted in prepare_report.json)")
    p.add_argument("--input-doc", choices=stages.INPUT_DOCS, default="names",
                   help="what the agent's arguments turn shows of an API's parameters: their names (default), or "
                        "params: also each one's type, allowed values and description")
    p.add_argument("--recovery-share", type=_fraction, default=0.0, metavar="FRACTION",
                   help="give that share of the ComplexFuncBench / NESTFUL training trajectories one failed call, its "
                        "replay error and the call done right (toolgen/data/recovery.py; 0..1, default 0)")
    prepare_views.add_arguments(p)
    p.add_argument("--config", help="a training config: its data.toolbench and data.prepare_args are used")
    args = p.parse_args(argv)
    if args.config:
        import shlex

        from toolgen.config import load_config
        data = load_config(args.config).data
        args = p.parse_args(shlex.split(data.prepare_args) + (["--toolbench", data.toolbench] if data.toolbench else [])
                            + list(argv if argv is not None else sys.argv[1:]))
    if not (args.toolbench or args.tools_dir or args.api_catalog or args.queries):
        args.toolbench = SAMPLE_DIR
    prepare_views.check_arguments(p, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.query_writer:
            query_writer.check_model(args.query_writer)   # a model that cannot load stops here, before any work
        check_out_dir(args.out)   # before the work, not after it
        inputs = find_inputs(args.toolbench, args.tools_dir, args.api_catalog, args.queries, args.trajectories)
        for line in describe_inputs(inputs):
            print(f"toolgen-prepare: {line}", flush=True)
        old_cache = prepare_views.read_old_cache(args.out)   # --out is replaced whole: the writer's answers are carried across
        outputs = prepare(None, **inputs, test_fraction=args.test_fraction, seed=args.seed, strict=args.strict,
                          extra_tokens=args.extra_tokens, synthetic_queries=args.synthetic_queries,
                          complexfuncbench=args.complexfuncbench, nestful=args.nestful,
                          observation_budget=args.observation_budget, min_complete=args.min_complete,
                          val_fraction=args.val_fraction, views=args.views, multi_rounds=args.multi_queries_per_api,
                          agent_val_fraction=args.agent_val_fraction, input_doc=args.input_doc,
                          recovery_share=args.recovery_share, observation_order=args.observation_order,
                          writer=prepare_views.writer_options(args), writer_cache=(
                              query_writer.read_cache(args.query_writer_cache) if args.query_writer_cache else [])
                          + old_cache)
        if old_cache and query_writer.CACHE_FILE not in outputs:
            outputs[query_writer.CACHE_FILE] = old_cache   # unused this time (no llm view): kept, not lost
        write_atomically(outputs, args.out)
    except (DataError, OSError) as e:   # OSError: a missing or unreadable file, named by the message
        sys.exit(f"toolgen-prepare: error: {e}")
    report = outputs["prepare_report.json"]
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v}" for k, v in report["written"].items()))
    if report["skipped"]:
        print("skipped: " + ", ".join(f"{k} {v}" for k, v in report["skipped"].items()))


if __name__ == "__main__":
    main()
