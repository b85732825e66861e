"""The data of an addition (toolgen/add_tools.py): the new tools' tokens, their examples, the replay of the parent's
stage files, and the prepared folder of the whole catalog.

Tokens: a new API with the tool and API name of one the model knows is a collision (listed; the run stops unless
--replace-docs, which keeps the token and replaces its documentation). The others are named as prepare names them
(tokens.tool_token_names), with the model's tokens reserved: an old token never changes. A new name equal to a
distractor of the parent (--extra-tokens) takes that token: it is in the vocabulary already, at its id.

tool_tokens.json lists the parent's tokens first, in their order, then the new ones: the tokenizer gives old tokens the
same ids (train.py checks it before it builds the model).
"""

import json
import os
import random

from toolgen import prepare, prepare_views, query_writer
from toolgen.config import STAGES
from toolgen.data import stages, views as view_lib
from toolgen.data.toolbench import Api, Catalog, DataError, read_queries, resolve_queries
from toolgen.tokens import tool_token_names

STAGE_FILE = "add_tools.json"   # config.ADD_TOOLS.file
# The prepared folder of the whole catalog: prepare's files (old examples + the new tools'), the stage file, a report.
DATA_FILES = ("tool_memorization.json", "retrieval_training.json", "agent_tuning.json", "retrieval_test.json",
              "retrieval_val.json", "agent_test.json", "agent_e2e_test.json", "agent_e2e_val.json",
              "retrieval_test_agent_sources.json",
              "tool_tokens.json", "prepare_report.json", STAGE_FILE, "add_tools_report.json")
HELD_OUT = ("retrieval_test.json", "retrieval_val.json", "agent_test.json")
COPIED = ("agent_e2e_test.json", "agent_e2e_val.json", "retrieval_test_agent_sources.json")   # nothing new to add


class AddToolsError(ValueError):
    """Something that stops an addition before any work: the message names the file, the record or the flag."""


def chain_stage(info):
    """The chain stage whose skills a stage folder has: its own, or for an addition the one its first parent had."""
    return info.get("chain_stage") or info["stage"]


def covered(stage):
    """The chain stages up to `stage`: their stage files are what the parent learnt, so what is replayed."""
    names = list(STAGES)
    return names[:names.index(stage) + 1]


def old_catalog(tools):
    """The model's APIs as Api records, from tool_tokens.json's entries -> ({key: Api}, {key: token}). Only what
    queries, trajectories and api_input_doc need is there (the stage-1 text is not rebuilt: old tools are replayed)."""
    apis, names = {}, {}
    for token, entry in tools.items():
        doc = entry.get("input_doc") or {}
        texts = doc.get("parameters") or {}   # --input-doc params: each parameter's text, kept as it was trained
        api = Api(entry["category"], entry["tool"], entry["api"], api_description=doc.get("description") or "",
                  required=tuple(_param_json(n, texts) for n in doc.get("required", [])),
                  optional=tuple(_param_json(n, texts) for n in doc.get("optional", [])))
        apis[api.key], names[api.key] = api, token
    return apis, names


def _param_json(name, texts):
    """A parameter record for Api; an input doc's own text for it rides along (stages.api_input_doc shows it as is)."""
    return json.dumps({"name": name, **({"input_text": texts[name]} if name in texts else {})})


def name_new_tools(prepared, new_apis, replace_docs, where):
    """-> (names {new key: token}, replaced {new key: old key}, collisions of the new names). A (tool, api) the model
    knows is an AddToolsError listing every such token, unless replace_docs."""
    tools = prepared["tools"]
    by_tool_api = {(e["tool"], e["api"]): (t, (e["category"], e["tool"], e["api"])) for t, e in tools.items()}
    clashes = {k: by_tool_api[k[1:]] for k in sorted(new_apis) if k[1:] in by_tool_api}
    twice = sorted({token for k, (token, _) in clashes.items()
                    if [t for t, _ in clashes.values()].count(token) > 1})
    if twice:   # one token cannot carry two documentations
        raise AddToolsError(f"{where}: several new APIs (in other categories) have the tool and API name of "
                            f"{', '.join(twice)}: keep one of them")
    if clashes and not replace_docs:
        listed = "; ".join(f"{token} ({'/'.join(k)})" for k, (token, _) in clashes.items())
        raise AddToolsError(f"{where}: {len(clashes)} new API(s) have the tool and API name of a tool the model "
                            f"knows: {listed}. Nothing was trained; pass --replace-docs to replace their "
                            "documentation (the tokens stay), or rename them")
    reserved = {t: (e["category"], e["tool"], e["api"]) for t, e in tools.items()}   # distractors are not reserved
    fresh, collisions = tool_token_names([k for k in new_apis if k not in clashes], reserved)
    names = {**fresh, **{k: token for k, (token, _) in clashes.items()}}
    return names, {k: old_key for k, (_, old_key) in clashes.items()}, collisions


def tool_tokens_json(prepared, new_apis, names, replaced, collisions):
    """The parent's tool_tokens.json with the new tools: old tokens first and in order (ids kept), new ones after."""
    old_tokens = prepared["tokens"]
    known = set(old_tokens)
    added = [names[k] for k in sorted(new_apis) if names[k] not in known]
    promoted = [names[k] for k in sorted(new_apis) if names[k] in known and k not in replaced]
    tools = dict(prepared["tools"])
    for k in sorted(new_apis):
        tools.pop(names[k], None)   # a replaced documentation: the entry is written anew (maybe another category)
        tools[names[k]] = {"category": k[0], "tool": k[1], "api": k[2],
                           "documentation": stages.api_documentation(new_apis[k]),
                           "input_doc": json.loads(stages.api_input_doc(new_apis[k],
                                                                        prepared.get("input_doc") == "params"))}
    out = {**prepared, "tokens": old_tokens + added, "tools": tools,
           "collisions": list(prepared.get("collisions", [])) + collisions}
    if "distractors" in prepared:
        out["distractors"] = prepared["distractors"] - len(promoted)
    return out, added, promoted


def read_stage_files(data_dir, names):
    out = {}
    for name in names:
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                out[name] = json.load(f)
        else:
            out[name] = []
    return out


def query_examples(paths, catalog, names, new_keys, split, report):
    """Real queries that name a new tool (the others are the parent's business: skipped, counted), split as the
    parent's data was (same seed, same hash): (train examples, test records, validation records)."""
    raw = []
    for path in paths:
        stem, records, skips = read_queries(path)
        for reason, detail in skips:
            report.skip(reason, detail)
        queries = resolve_queries(stem, records, catalog, path)
        kept = [r for r, q in zip(records, queries) if set(q.relevant) & new_keys]
        for q in queries:
            if not set(q.relevant) & new_keys:
                report.skip("query_names_no_new_tool", f"{path} query {q.uid}")
        raw.append((path, stem, kept))
    return prepare._retrieval_examples(raw, catalog, names, split["seed"], split["test_fraction"], report,
                                       split["val_fraction"])


def trajectory_examples(paths, catalog, names, new_tokens, split, report):
    """Trajectories that call a new tool, split as the parent's were: (train examples, test examples)."""
    train, test = prepare._agent_examples(prepare._expand(paths), catalog, names, split["seed"],
                                          split["test_fraction"], report, split["min_complete"],
                                          split["input_doc"] == "params")
    def calls_new(ex):
        return any(m["role"] == "assistant" and m["content"] in new_tokens for m in ex["messages"])
    for ex in train + test:
        if not calls_new(ex):
            report.skip("trajectory_calls_no_new_tool", ex["query"][:80])
    return [ex for ex in train if calls_new(ex)], [ex for ex in test if calls_new(ex)]


def view_examples(new_apis, names, views, seed, held_out, report, add_cfg, writer_cache, args):
    """The retrieval views of the new tools only (prepare's views; multi-API requests group new APIs with new APIs):
    (examples, counts per view, the query writer's report or None). The llm view's requests come from writer_cache
    (the records of --query-writer-cache), which must answer for every new API: no model is loaded here."""
    options = query_writer.WriterOptions(queries_per_api=args.writer_queries_per_api)
    try:
        examples, counts, _, writer_report = prepare_views.view_examples(
            Catalog(list(new_apis.values())), names, views, seed, add_cfg.multi_queries_per_api, options,
            writer_cache, held_out, report)
    except query_writer.MissingAnswers as e:
        raise AddToolsError(
            f"--query-writer-cache {args.query_writer_cache}: {e.missing} of the {e.total} new APIs have no answer "
            f"for {e.per_api} queries per API (first: {e.first}; an answer counts only for the documentation and "
            f"--writer-queries-per-api it was written for): write them into it with python -m toolgen.query_writer "
            f"--catalog {args.api_catalog} --model MODEL --queries-per-api {e.per_api} --out "
            f"{args.query_writer_cache} (the answers already there are kept)") from None
    return examples, counts, writer_report


def replay(old_files, n, seed, drop_targets):
    """A seeded sample of n examples of the parent's stage files (each file in proportion to its size). Memorization
    examples of a replaced documentation are not replayed: they would teach the old text."""
    pool = [(name, i) for name, examples in old_files.items() for i, ex in enumerate(examples)
            if not (name == STAGES["memorization"].file and ex["messages"][-1]["content"] in drop_targets)]
    picked = sorted(random.Random(f"replay\0{seed}").sample(pool, min(n, len(pool))))
    return [{"messages": old_files[name][i]["messages"], "part": f"replay:{name}"} for name, i in picked]


def llm_cache(args, views, chain):
    """The records of --query-writer-cache (read before any work), checked against add_tools.views and the parent."""
    retrieves = STAGES["retrieval"].name in chain
    if args.query_writer_cache and not retrieves:
        raise AddToolsError(f"--query-writer-cache: {args.model} is a {chain[-1]} stage, which does not retrieve")
    if args.query_writer_cache and "llm" not in views:
        raise AddToolsError("--query-writer-cache writes the llm view: add llm to add_tools.views")
    if "llm" in views and retrieves and not args.query_writer_cache:
        raise AddToolsError("add_tools.views has llm: give --query-writer-cache FILE (the requests an instruct model "
                            "wrote before: python -m toolgen.query_writer)")
    if not args.query_writer_cache:
        return []
    try:
        return query_writer.read_cache(args.query_writer_cache)
    except (DataError, OSError) as e:
        raise AddToolsError(f"--query-writer-cache {args.query_writer_cache}: {e}") from None


def new_tool_examples(parent, new_apis, names, replaced, args, add_cfg, split, report):
    """{stage file: the new tools' training examples}, {held-out file: new records}, view counts, the chain, the query
    writer's report (llm view) or None. What the parent's chain stage does decides what is built: views and queries
    from retrieval on, trajectories for an agent."""
    chain = covered(chain_stage(parent["info"]))
    if args.queries and STAGES["retrieval"].name not in chain:
        raise AddToolsError(f"--queries: {args.model} is a {chain[-1]} stage, which does not retrieve from queries")
    if args.trajectories and STAGES["agent"].name not in chain:
        raise AddToolsError(f"--trajectories: {args.model} is a {chain[-1]} stage, not an agent stage")
    try:
        views = view_lib.parse_views(add_cfg.views) if add_cfg.views else ()
    except DataError as e:
        raise AddToolsError(f"add_tools.views: {e}") from None
    writer_cache = llm_cache(args, views, chain)
    old_apis, old_names = old_catalog(parent["prepared"]["tools"])
    for old_key in replaced.values():   # the new record of a re-documented API stands for it
        old_apis.pop(old_key, None)
        old_names.pop(old_key, None)
    catalog, all_names = Catalog(list(old_apis.values()) + list(new_apis.values())), {**old_names, **names}
    memorization = [stages.memorization_example(new_apis[k], names[k]) for k in sorted(new_apis)]
    train = {STAGES["memorization"].file: memorization, STAGES["retrieval"].file: [], STAGES["agent"].file: []}
    held = {name: [] for name in HELD_OUT}
    counts, writer_report = {}, None
    if STAGES["retrieval"].name in chain:
        q_train, held["retrieval_test.json"], held["retrieval_val.json"] = query_examples(
            args.queries, catalog, all_names, set(new_apis), split, report)
        held_out = {view_lib.normalize(r["messages"][0]["content"])
                    for r in held["retrieval_test.json"] + held["retrieval_val.json"] + split["held_out_queries"]}
        v_train, counts, writer_report = view_examples(new_apis, names, views, split["seed"], held_out, report,
                                                       add_cfg, writer_cache, args)
        train[STAGES["retrieval"].file] = v_train + q_train
    if STAGES["agent"].name in chain and args.trajectories:
        train[STAGES["agent"].file], held["agent_test.json"] = trajectory_examples(
            args.trajectories, catalog, all_names, set(names.values()), split, report)
    return train, held, counts, chain, writer_report


def input_hashes(args):
    from toolgen.checkpoint import file_sha256
    files = {"catalog": [args.api_catalog], "queries": args.queries,
             "trajectories": prepare._expand(args.trajectories),
             "query_writer_cache": [args.query_writer_cache] if args.query_writer_cache else []}
    return {kind: {p: file_sha256(p) for p in paths} for kind, paths in files.items()}


def merge_held_out(old, new):
    """The parent's held-out records, then the new ones; a query given again (same id) is now resolved against the
    whole catalog, so its new record replaces the old one (whose new tools were missing)."""
    ids = {r["query_id"] for r in new if "query_id" in r}
    return [r for r in old if r.get("query_id") not in ids] + new


def split_settings(data_dir):
    """How the parent's data was split (prepare_report.json): new queries are split the same way."""
    path = os.path.join(data_dir, "prepare_report.json")
    report = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    return {"seed": report.get("seed", 0), "test_fraction": report.get("test_fraction", 0.2),
            "val_fraction": report.get("val_fraction", 0.1), "min_complete": report.get("min_complete", 0.0),
            "observation_budget": report.get("observation_budget"),
            "observation_order": report.get("observation_order", "document")}


def stage_file(train, old, chain, add_cfg, seed, replaced_tokens):
    """add_tools.json: the new tools' examples (documentation repeated memorization_repeats times: one short stage
    must still make it stick), then the replay, replay_fraction of the whole."""
    memo = STAGES["memorization"].file
    new = [{"messages": ex["messages"], "part": f"new:{name}"} for name, examples in train.items()
           for ex in examples for _ in range(add_cfg.memorization_repeats if name == memo else 1)]
    share = add_cfg.replay_fraction
    n_replay = round(len(new) * share / (1 - share))
    replayed = replay({STAGES[s].file: old[STAGES[s].file] for s in chain}, n_replay, seed, replaced_tokens)
    return new, replayed


def count_parts(examples):
    out = {}
    for ex in examples:
        out[ex["part"]] = out.get(ex["part"], 0) + 1
    return out


def build_outputs(parent, api_list, args, add_cfg):
    """Everything the data folder holds, as {file name: object}; nothing touches the disk here."""
    from toolgen.checkpoint import file_sha256
    new_apis = Catalog(api_list).apis   # a key given twice: the first wins, as prepare reads a catalog
    prepared = parent["prepared"]
    names, replaced, collisions = name_new_tools(prepared, new_apis, args.replace_docs, args.api_catalog)
    tool_tokens, added, promoted = tool_tokens_json(prepared, new_apis, names, replaced, collisions)
    # the input docs the parent learnt, for the new tools and the new trajectories alike (tool_tokens_json reads it too)
    split = {**split_settings(parent["data_dir"]), "input_doc": prepared.get("input_doc", "names")}
    train_files = [STAGES[s].file for s in STAGES]
    old = read_stage_files(parent["data_dir"], train_files + list(HELD_OUT) + list(COPIED))
    split["held_out_queries"] = old["retrieval_test.json"] + old["retrieval_val.json"]
    report = prepare.Report(strict=False)
    train, held, view_counts, chain, writer_report = new_tool_examples(parent, new_apis, names, replaced, args,
                                                                       add_cfg, split, report)
    replaced_tokens = {names[k] for k in replaced}
    new, replayed = stage_file(train, old, chain, add_cfg, split["seed"], replaced_tokens)
    memo = STAGES["memorization"].file
    outputs = {name: old[name] + train[name] for name in train_files}
    outputs[memo] = [ex for ex in old[memo] if ex["messages"][-1]["content"] not in replaced_tokens] + train[memo]
    outputs.update({name: merge_held_out(old[name], held[name]) for name in HELD_OUT})
    outputs.update({name: old[name] for name in COPIED})
    outputs["tool_tokens.json"] = tool_tokens
    outputs[STAGE_FILE] = new + replayed
    settings = {k: v for k, v in split.items() if k != "held_out_queries"}
    outputs["prepare_report.json"] = {
        **settings, "catalog_source": f"{parent['data_dir']} + {args.api_catalog} (toolgen-add-tools)",
        "written": {n: len(o) if n != "tool_tokens.json" else len(o["tokens"]) for n, o in outputs.items()},
        "skipped": dict(report.skipped), "skipped_examples": dict(report.examples)}
    outputs["add_tools_report.json"] = {
        "parent": {"path": os.path.abspath(parent["dir"]), "stage": parent["info"]["stage"],
                   "data": os.path.abspath(parent["data_dir"])},
        "chain_stage": chain[-1], "tools_added": added + promoted, "tools_replaced": sorted(replaced_tokens),
        "distractors_promoted": promoted, "collisions": collisions,
        "replay_fraction": add_cfg.replay_fraction, "memorization_repeats": add_cfg.memorization_repeats,
        "views": view_counts, **({"query_writer": writer_report} if writer_report else {}),
        "examples": {"new": len(new), "replay": len(replayed), **count_parts(new + replayed)},
        "skipped": dict(report.skipped),
        "data_hashes": {"inputs": input_hashes(args),
                        "parent_data": {n: file_sha256(os.path.join(parent["data_dir"], n)) for n in train_files
                                        if os.path.exists(os.path.join(parent["data_dir"], n))}}}
    return outputs
