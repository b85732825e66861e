"""Evaluate trained stages side by side with BM25, dense MiniLM retrieval and the untrained base model.

    python -m toolgen.evaluate --model finetuned_toolgen_model/agent_tuning --data finetuned_toolgen_model/data \
        --out finetuned_toolgen_model/eval           (console: toolgen-evaluate; --model is repeatable)

Writes metrics.json, metrics.md, ndcg_at_k.png and training_loss.png into --out.
"""

import argparse
import dataclasses
import os
import sys
import time

from toolgen import quiet  # noqa: F401  (first: it silences start-up notices before the libraries print them)

import torch  # noqa: E402

from toolgen import baselines, decoding, e2e_merge, metrics, models, parent_scores, retrieval  # noqa: E402
from toolgen.checkpoint import read_json  # noqa: E402
from toolgen.config import STAGES, ConfigError, load_config  # noqa: E402
from toolgen.data.agent_sources import (E2E_FILES, e2e_prefix, prepared_observation,  # noqa: E402
                                        source_tokens)
from toolgen.agent_metrics import agent_metrics  # noqa: E402
from toolgen.toolset import Toolset, context_budget  # noqa: E402
from toolgen.report import write_report
from toolgen.tokens import FINISH

TOP = 100          # rankings are kept to the top 100: MRR is MRR@100
VAL = "retrieval_val"   # the validation split carved from the training queries: it tunes, it is never reported
PLOT_K = range(1, 11)
E2E_MAX_STEPS = 14   # action turns per held-out request: ComplexFuncBench's training requests reach 11 gold calls
#                      (agent_tuning.json), and success allows 2 extra calls and the Finish (the loop's default of 8
#                      made 15 % of the held-out ones unwinnable)


class EvalError(ValueError):
    """Bad input to the evaluation: the message names the file (and the record)."""


def load_json(path):
    return read_json(path, EvalError)


def read_query_file(path):
    """A ToolBench query file: [{"query": text, "relevant APIs": [[tool, api], ...]}, ...], checked record by record."""
    records = load_json(path)
    if not isinstance(records, list):
        raise EvalError(f"{path}: expected a list of queries")
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("query"), str):
            raise EvalError(f"{path} record {i}: needs a 'query' text")
        labels = r.get("relevant APIs", [])
        if not isinstance(labels, list) or not all(isinstance(l, list) and len(l) == 2 for l in labels):
            raise EvalError(f"{path} record {i}: 'relevant APIs' must be a list of [tool, api] pairs")
    return records


def check_stage_folder(path):
    """A stage folder is usable when it is complete: checked for every --model before any model or baseline loads."""
    for needed in ("stage.json", "tool_tokens.json", os.path.join("adapter", "adapter_config.json")):
        if not os.path.exists(os.path.join(path, needed)):
            raise EvalError(f"--model {path}: not a finished stage folder ({needed} is missing)")


def query_sets(data_dir, extra_files, tools):
    """{name: [(query text, set of relevant tokens, n missing, split)]}: retrieval_test.json, then each --queries file,
    and retrieval_val.json when prepared with a validation split (used to tune, never reported).
    The split of a retrieval_test query is its source file (its id is "<file stem>_<query_id>")."""
    def rows_of(file_name):
        return [(r["messages"][-1]["content"], set(r["relevant"]) | set(r["missing_relevant"]),
                 len(r["missing_relevant"]), r["query_id"].rsplit("_", 1)[0])
                for r in load_json(os.path.join(data_dir, file_name))]
    sets = {"retrieval_test": rows_of("retrieval_test.json")}
    if os.path.exists(os.path.join(data_dir, VAL + ".json")):
        sets[VAL] = rows_of(VAL + ".json")
    by_tool_api = {(v["tool"], v["api"]): t for t, v in tools.items()}
    for path in extra_files:
        rows = []
        for r in read_query_file(path):
            labels = [tuple(x) for x in r.get("relevant APIs", [])]
            # a relevant API outside the catalog stays relevant (a placeholder no system can return): it counts as a miss
            relevant = {by_tool_api.get(l, f"<missing:{l[0]}&&{l[1]}>") for l in labels}
            rows.append((r["query"], relevant, sum(l not in by_tool_api for l in labels), None))
        sets[os.path.splitext(os.path.basename(path))[0]] = rows
    return sets


def score_rankings(rankings, rows):
    """Metrics over all rows, and per split where the rows have one (keys '<split>/<metric>')."""
    out = metrics.retrieval_metrics(rankings, [rel for _, rel, _, _ in rows])
    out["relevant_missing_from_catalog"] = sum(m for _, _, m, _ in rows)
    for split in sorted({r[3] for r in rows if r[3]}):
        idx = [i for i, r in enumerate(rows) if r[3] == split]
        for key, value in metrics.retrieval_metrics([rankings[i] for i in idx], [rows[i][1] for i in idx]).items():
            out[f"{split}/{key}"] = value
    return out


def set_metrics(set_name, ranked, rows, seconds):
    """The metrics of one query set under its key prefix: `retrieval/...` for the test split, `queries/<file>/...`."""
    prefix = "retrieval" if set_name == "retrieval_test" else f"queries/{set_name}"
    out = {f"{prefix}/{key}": value for key, value in score_rankings(ranked, rows).items()}
    out[f"{prefix}/queries_per_s"] = len(rows) / max(seconds, 1e-9)
    return out


def tool_scores(model, tokenizer, tool_ids, rows):
    """The model's log-probabilities of each candidate tool at the answer position -> ([N x candidates], seconds,
    [whether the unconstrained argmax is not a tool])."""
    t0 = time.time()
    logprobs = decoding.next_token_logprobs(model, tokenizer, [[{"role": "user", "content": r[0]}] for r in rows])
    allowed = set(tool_ids)
    return logprobs[:, tool_ids], time.time() - t0, [i not in allowed for i in logprobs.argmax(-1).tolist()]


def model_system(model, tokenizer, candidates, sets, memorization, agent_test, do_agent, new_tools=()):
    """Every metric of one model: retrieval on each query set, memorization, and (optionally) the agent steps.
    candidates: the tool tokens a prediction may be (the catalog, plus distractors where prepared with them).
    new_tools: the tools an add_tools stage documented (stage.json): their memorization accuracy is reported apart.
    Also returns {set: (tool scores, seconds)} for the hybrid rows."""
    tool_list = list(candidates)
    tool_ids = tokenizer.convert_tokens_to_ids(tool_list)
    result, rankings_by_set, scores_by_set, invalid, constrained = {}, {}, {}, [], []
    for name, rows in sets.items():
        scores, seconds, not_a_tool = tool_scores(model, tokenizer, tool_ids, rows)
        scores_by_set[name] = (scores, seconds)
        ranked = retrieval.rank(scores.numpy(), tool_list, TOP)
        constrained += [r[0] for r in ranked]
        invalid += not_a_tool
        if name == VAL:   # kept apart: it chooses among systems and settings, it is not a result
            result.update({f"val/{k}": v for k, v in metrics.retrieval_metrics(ranked, [r[1] for r in rows]).items()})
        else:
            rankings_by_set[name] = ranked
            result.update(set_metrics(name, ranked, rows, seconds))
    if memorization:
        logprobs = decoding.next_token_logprobs(model, tokenizer, [ex["messages"][:-1] for ex in memorization])
        predicted = [r[0] for r in retrieval.rank(logprobs[:, tool_ids].numpy(), tool_list, 1)]
        constrained += predicted
        gold = [ex["messages"][-1]["content"] for ex in memorization]
        result["memorization/accuracy"] = metrics.accuracy(predicted, gold)
        result["memorization/f1"] = metrics.macro_f1(predicted, gold)
        new = [i for i, g in enumerate(gold) if g in set(new_tools)]
        if new:
            result["memorization/new_tools_accuracy"] = metrics.accuracy([predicted[i] for i in new],
                                                                         [gold[i] for i in new])
        allowed = set(tool_ids)
        invalid += [i not in allowed for i in logprobs.argmax(-1).tolist()]
    if do_agent and agent_test:
        agent, agent_invalid = agent_metrics(model, tokenizer, tool_list + [FINISH], agent_test)
        result.update(agent)
        invalid += agent_invalid
    # measured, not assumed: the constrained predictions that are not a real tool (0 when the mask works)
    known = set(tool_list)
    result["invalid_tool_rate"] = sum(t not in known for t in constrained) / len(constrained) if constrained else 0.0
    result["invalid_tool_rate_unconstrained"] = sum(invalid) / len(invalid) if invalid else 0.0
    return result, rankings_by_set, scores_by_set


def hybrid_system(scores_by_set, prior, sets, candidates, retrieval_cfg):
    """The `+prior` row of a model: its tool scores fused with the retriever prior (toolgen/retrieval.py). With
    retrieval.tune the prior, fusion, k and w are chosen on the validation split (never on test); else the config's."""
    kinds = [k for k in retrieval.PRIORS if k == "none" or set(k.split("+")) <= set(prior.kinds)]
    fixed = retrieval.Fusion(retrieval_cfg.prior, retrieval_cfg.fusion, retrieval_cfg.rrf_k, retrieval_cfg.prior_weight)
    result, rankings_by_set, chosen = {}, {}, {"fusion": dataclasses.asdict(fixed), "tuned_on": None}
    if retrieval_cfg.tune and VAL in sets:
        val_scores, _ = scores_by_set[VAL]
        fusion, val_ndcg, table = retrieval.tune(val_scores, prior.scores_of(VAL), [r[1] for r in sets[VAL]],
                                                 candidates, kinds)
        chosen = {"fusion": dataclasses.asdict(fusion), "tuned_on": f"{VAL}.json ({len(sets[VAL])} queries)",
                  "val_ndcg@5": val_ndcg, "ablation": fusion_ablation(table, scores_by_set, prior, sets, candidates)}
    else:
        fusion = fixed
    for name, rows in sets.items():
        if name == VAL:
            continue
        t0 = time.time()
        scores, seconds = scores_by_set[name]
        ranked = retrieval.rank(retrieval.fuse(scores, prior.scores_of(name), fusion), candidates, TOP)
        seconds += time.time() - t0 + prior.seconds.get(name, 0.0)
        rankings_by_set[name] = ranked
        result.update(set_metrics(name, ranked, rows, seconds))
    result["prior/tools_without_documentation"] = prior.undocumented
    result["prior/choice"] = chosen
    return result, rankings_by_set


def fusion_ablation(table, scores_by_set, prior, sets, candidates):
    """For each (prior, fusion) pair: its best setting on validation and that setting's test NDCG@5 (test only
    reports; the choice above was made on validation alone)."""
    best = {}
    for setting, score in table:
        key = setting.prior if setting.prior == "none" else f"{setting.prior}/{setting.fusion}"
        if key not in best or score > best[key][1] + 1e-12:
            best[key] = (setting, score)
    scores, _ = scores_by_set["retrieval_test"]
    relevant = [r[1] for r in sets["retrieval_test"]]
    out = {}
    for key, (setting, score) in best.items():
        ranked = retrieval.rank(retrieval.fuse(scores, prior.scores_of("retrieval_test"), setting), candidates, 5)
        out[key] = {"setting": dataclasses.asdict(setting), "val_ndcg@5": score,
                    "test_ndcg@5": metrics.mean_ndcg(ranked, relevant, 5)}
    return out


def e2e_system(model, tokenizer, requests, tools, args, tool_scorer=None, base_tools=None, stage_dir=""):
    """The agent loop end to end (toolgen/agent.py) on the held-out requests of each agent source, each replayed
    against its gold calls -> ({agent_e2e/<source>/<metric>}, {source: transcripts}). args: --e2e-limit, --e2e-width
    and --e2e-time-limit (per source). base_tools {source: tokens}: the untrained base, told the source's tools in
    its system turn (a prompt cannot hold the whole catalog) and choosing among them only. On --e2e-split val the
    metrics are agent_e2e_val/<source>/<metric>."""
    from toolgen.agent import AgentConfig, run_e2e
    result, transcripts, prefix = {}, {}, e2e_prefix(args.e2e_split)
    chars, order = prepared_observation(args.data)   # how the --data folder's agent examples cut a response
    budget = {"context_budget": context_budget(args.e2e_context_budget, stage_dir, AgentConfig.context_budget),
              "observation_chars": args.e2e_observation_chars or chars, "observation_order": order}
    for source, rows in requests.items():
        rows = rows[:args.e2e_limit] if args.e2e_limit else rows
        subset = tools if base_tools is None else Toolset(
            [tools.tools[t] for t in tools.tokens if t in base_tools.get(source, ())], tools.source)
        config = AgentConfig(max_steps=E2E_MAX_STEPS, tool_list=base_tools is not None,
                             block_repeats=args.e2e_block_repeats, **budget)
        found, m = run_e2e(model, tokenizer, rows, subset, config, think=False, tool_scorer=tool_scorer,
                           width=args.e2e_width, desc=f"agent e2e {source}", time_limit=args.e2e_time_limit or None)
        result.update({f"{prefix}/{source}/{k.split('/', 1)[1]}": v for k, v in m.items()})
        transcripts[source] = [t.to_dict() for t in found]
    return result, transcripts


def baseline_systems(documents, sets, views):
    """BM25 and MiniLM over the documentation, each in its chosen view."""
    items = list(documents)
    out, rankings = {}, {}
    for name, kind in (("bm25", "bm25"), ("minilm", "dense")):
        out[name], rankings[name] = {"doc_view": views[kind]}, {}
        index = baselines.INDEXES[kind]([baselines.doc_text(documents[t], views[kind]) for t in items])
        for set_name, rows in sets.items():
            if set_name == VAL:
                continue
            t0 = time.time()
            ranked = baselines.top_k(index.scores([r[0] for r in rows]), items, TOP)
            out[name].update(set_metrics(set_name, ranked, rows, time.time() - t0))
            rankings[name][set_name] = ranked
    return out, rankings


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[], help="a stage folder; repeatable")
    p.add_argument("--output-dir", help="a pipeline's output folder: its finished retrieval/agent stages are evaluated, "
                                        "into <output-dir>/eval, with <output-dir>/data unless --data is given")
    p.add_argument("--data", help="the prepared data folder (tool_tokens.json, *_test.json)")
    p.add_argument("--out")
    p.add_argument("--queries", action="append", default=[], help="extra ToolBench query file; repeatable")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--no-base", action="store_true", help="skip the untrained base model (the floor)")
    p.add_argument("--base-only", action="store_true",
                   help="only the untrained base (of the first --model): e.g. to run its end-to-end agent in parallel")
    p.add_argument("--runs", help="TensorBoard folder for the loss plot (default: <model>/../runs)")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end agent runs (agent_e2e_test.json)")
    p.add_argument("--e2e-split", choices=list(E2E_FILES), default="test",
                   help="val: the validation requests (agent_e2e_val.json), to choose the agent's settings")
    p.add_argument("--e2e-block-repeats", action="store_true", help="the loop's AgentConfig.block_repeats")
    p.add_argument("--e2e-context-budget", type=int,
                   help="the loop's context budget (tokens; default 4096, or the agent stage's max_length when "
                        "larger; 0: no limit)")
    p.add_argument("--e2e-observation-chars", type=int, default=0,
                   help="characters of a tool result the loop shows (default: the data's --observation-budget)")
    p.add_argument("--e2e-only", action="store_true",
                   help="only the end-to-end agent runs: no ranking, memorization or step-wise metrics, no baselines "
                        "and no +prior rows (an e2e job beside the evaluation, which computes those)")
    p.add_argument("--e2e-source", action="append", default=[],
                   help="only this agent source end to end (repeatable; default all): e.g. one process per source")
    p.add_argument("--e2e-limit", type=int, default=0, help="the first N held-out requests per agent source (0: all)")
    p.add_argument("--e2e-width", type=int, default=64,
                   help="requests run at once, their model calls batched (1: one at a time, 0: all at once; the same "
                        "transcripts). Wider is faster: a generation lasts as long as its longest row")
    p.add_argument("--e2e-time-limit", type=float, default=0,
                   help="seconds per source and system (0: none): then no request starts and a running one stops; "
                        "the metrics cover the finished requests, agent_e2e/<source>/requests_cut counts the others")
    p.add_argument("--e2e-shard", type=e2e_merge.shard_spec, metavar="K/N",
                   help="every N-th held-out request from the K-th on (0 <= K < N): N processes share a source, one "
                        "per GPU; python -m toolgen.e2e_merge scores their folders together")
    p.add_argument("--config", help="a config whose `retrieval` section sets the prior and fusion (default: built-in)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="e.g. --set retrieval.prior=bm25 --set retrieval.tune=false")
    args = p.parse_args(argv)
    if args.output_dir:   # the stages after memorization (memorization alone does not retrieve from queries)
        args.model += [os.path.join(args.output_dir, STAGES[s].folder) for s in list(STAGES)[1:]
                       if os.path.exists(os.path.join(args.output_dir, STAGES[s].folder, "stage.json"))]
        args.data = args.data or os.path.join(args.output_dir, "data")
        args.out = args.out or os.path.join(args.output_dir, "eval")
        args.runs = args.runs or os.path.join(args.output_dir, "runs")
    if not (args.data and args.out):
        p.error("give --data and --out, or --output-dir")
    if args.e2e_only and args.no_e2e:
        p.error("--e2e-only and --no-e2e exclude each other")
    for flag, value in (("--e2e-limit", args.e2e_limit), ("--e2e-width", args.e2e_width), ("--e2e-time-limit",
                        args.e2e_time_limit), ("--e2e-context-budget", args.e2e_context_budget or 0),
                        ("--e2e-observation-chars", args.e2e_observation_chars)):
        if value < 0:
            p.error(f"{flag} {value}: must be 0 or more")
    try:
        evaluate(args)
    except (EvalError, ConfigError) as e:
        sys.exit(f"toolgen-evaluate: error: {e}")


def evaluate(args):
    for path in args.model:
        check_stage_folder(path)
    retrieval_cfg = load_config(args.config, args.overrides).retrieval
    tool_tokens = load_json(os.path.join(args.data, "tool_tokens.json"))
    tools, candidates = tool_tokens["tools"], [t for t in tool_tokens["tokens"] if t != FINISH]
    documents = {t: v["documentation"] for t, v in tools.items()}
    inputs = {"sets": query_sets(args.data, args.queries, tools), "candidates": candidates,
              "memorization": load_json(os.path.join(args.data, STAGES["memorization"].file)),
              "agent_test": load_json(os.path.join(args.data, "agent_test.json")),
              "e2e": {} if args.no_e2e else e2e_merge.load_requests(args.data, args.e2e_split, args.e2e_source,
                                                                     args.e2e_shard, EvalError),
              "source_tokens": source_tokens(tools)}
    if args.e2e_source and args.no_e2e:
        raise EvalError("--e2e-source: no end-to-end requests to choose from (--no-e2e)")
    inputs["toolset"] = Toolset.load(os.path.join(args.data, "tool_tokens.json")) if inputs["e2e"] else None
    sets = inputs["sets"]
    kinds = set() if args.no_baselines or args.e2e_only else set(baselines.INDEXES)
    if args.model and retrieval_cfg.prior != "none" and not args.e2e_only:
        kinds |= set(retrieval_cfg.prior.split("+"))
    views, view_table = baselines.choose_views(documents, sets.get(VAL), sorted(kinds))
    systems, rankings, extra = {}, {}, {}
    if not (args.no_baselines or args.e2e_only):
        systems, rankings = baseline_systems(documents, sets, views)
    prior = None
    if args.model and retrieval_cfg.prior != "none" and not (args.base_only or args.e2e_only):
        prior = retrieval.Prior(retrieval_cfg.prior, documents, candidates, views).compute(
            {name: [r[0] for r in rows] for name, rows in sets.items()})
    for i, stage_dir in enumerate(args.model[:1] if args.base_only else args.model):
        found = evaluate_stage(stage_dir, args, inputs, prior, retrieval_cfg, with_base=i == 0 and not args.no_base)
        for name, (metrics_of, rankings_of, transcripts) in found.items():
            systems[name] = metrics_of
            if rankings_of:   # none with --e2e-only
                rankings[name] = rankings_of
            extra.update({e2e_merge.transcript_file(name, s, args.e2e_split): t for s, t in transcripts.items()})
    runs = args.runs or (os.path.join(os.path.dirname(os.path.normpath(args.model[0])), "runs") if args.model else None)
    reported = {name: rows for name, rows in sets.items() if name != VAL}
    write_report(args.out, systems, rankings, reported, runs,
                 {"doc_views": views, "doc_view_val_ndcg@5": view_table, "validation_queries": len(sets.get(VAL, []))},
                 extra)
    print(open(os.path.join(args.out, "metrics.md")).read())


def evaluate_stage(stage_dir, args, inputs, prior, retrieval_cfg, with_base):
    """The rows of one stage folder: the model, its +prior row, and (for the first folder) the untrained base.
    -> {system name: (metrics, rankings, {source: e2e transcripts})}."""
    sets, candidates, e2e = inputs["sets"], inputs["candidates"], inputs["e2e"]
    tokenizer, model, _ = models.load_stage(stage_dir)
    if set(candidates) - set(tokenizer.get_vocab()):
        raise EvalError(f"{stage_dir} was trained without some tokens of {args.data}/tool_tokens.json")
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    toolset = inputs["toolset"]
    # --e2e-only: the loop's runs alone (the ranking metrics are the evaluation's, in another process)
    measure = (lambda *_, **__: ({}, {}, {})) if args.e2e_only else model_system
    rows = {}
    if with_base or args.base_only:
        with model.disable_adapter():   # the same base with the same initial tool rows, no training
            found, ranked, _ = measure(model, tokenizer, candidates, sets, inputs["memorization"], [], False)
            agent, transcripts = e2e_system(model, tokenizer, e2e, toolset, args,
                                            base_tools=inputs["source_tokens"], stage_dir=stage_dir) if e2e else ({}, {})
            rows["base"] = ({**found, **agent}, ranked, transcripts)
    if args.base_only:
        return rows
    try:
        parent_scores.attach(model, stage_dir)   # an addition that keeps the parent's scores of the old tools
    except ValueError as e:   # its parent-scores file does not fit the model
        raise EvalError(str(e)) from None
    models.merge_for_inference(model)   # after the base rows: disable_adapter would unmerge it again
    name = f"toolgen/{os.path.basename(os.path.normpath(stage_dir))}"
    info = load_json(os.path.join(stage_dir, "stage.json"))
    stage = info.get("chain_stage") or info["stage"]   # an add_tools stage does what its chain stage did
    new_tools = info.get("tools_added", []) + info.get("tools_replaced", [])
    found, ranked, scores = measure(model, tokenizer, candidates, sets, inputs["memorization"],
                                         inputs["agent_test"], stage == "agent", new_tools)
    agent, transcripts = e2e_system(model, tokenizer, e2e, toolset, args, stage_dir=stage_dir) \
        if e2e and stage != "memorization" else ({}, {})
    rows[name] = ({**found, **agent}, ranked, transcripts)
    if prior is not None:
        found, ranked = hybrid_system(scores, prior, sets, candidates, retrieval_cfg)
        fusion = retrieval.Fusion(**found["prior/choice"]["fusion"])
        agent, transcripts = ({}, {})
        if stage == "agent" and fusion.prior != "none":   # the prior at the agent's tool step, from the request
            scorer = retrieval.agent_scorer(prior, fusion, FINISH)
            if inputs["agent_test"]:
                agent = agent_metrics(model, tokenizer, candidates + [FINISH], inputs["agent_test"], scorer)[0]
            if e2e:
                found_e2e, transcripts = e2e_system(model, tokenizer, e2e, toolset, args, scorer, stage_dir=stage_dir)
                agent.update(found_e2e)
        rows[name + "+prior"] = ({**found, **agent}, ranked, transcripts)
    del model
    return rows


if __name__ == "__main__":
    main()
