"""Evaluate trained stages side by side with BM25, dense MiniLM retrieval and the untrained base model.

    python -m toolgen.evaluate --model finetuned_toolgen_model/agent_tuning --data finetuned_toolgen_model/data \
        --out finetuned_toolgen_model/eval           (console: toolgen-evaluate; --model is repeatable)

Writes metrics.json, metrics.md, ndcg_at_k.png and training_loss.png into --out.
"""

import argparse
import json
import os
import re
import sys
import time

from toolgen import quiet  # noqa: F401  (first: it silences start-up notices before the libraries print them)

import torch  # noqa: E402

from toolgen import baselines, decoding, metrics, models  # noqa: E402
from toolgen.config import STAGES  # noqa: E402
from toolgen.report import write_report
from toolgen.data.stages import ASK_INPUT
from toolgen.tokens import FINISH

TOP = 100          # rankings are kept to the top 100: MRR is MRR@100
PLOT_K = range(1, 11)


class EvalError(ValueError):
    """Bad input to the evaluation: the message names the file (and the record)."""


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise EvalError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalError(f"{path}: not valid JSON ({e})") from None


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
    """{name: [(query text, set of relevant tokens, n missing, split)]}: retrieval_test.json, then each --queries file.
    The split of a retrieval_test query is its source file (its id is "<file stem>_<query_id>")."""
    sets = {"retrieval_test": [(r["messages"][-1]["content"], set(r["relevant"]) | set(r["missing_relevant"]),
                                len(r["missing_relevant"]), r["query_id"].rsplit("_", 1)[0])
                               for r in load_json(os.path.join(data_dir, "retrieval_test.json"))]}
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


def model_system(model, tokenizer, candidates, sets, memorization, agent_test, do_agent):
    """Every metric of one model: retrieval on each query set, memorization, and (optionally) the agent steps.
    candidates: the tool tokens a prediction may be (the catalog, plus distractors where prepared with them)."""
    tool_list = list(candidates)
    tool_ids = tokenizer.convert_tokens_to_ids(tool_list)
    id_to_tool = dict(zip(tool_ids, tool_list))
    result, rankings_by_set, invalid, constrained = {}, {}, [], []
    for name, rows in sets.items():
        t0 = time.time()
        logprobs = decoding.next_token_logprobs(model, tokenizer, [[{"role": "user", "content": r[0]}] for r in rows])
        seconds = time.time() - t0
        ranked_ids = decoding.rank_tools(logprobs, tool_ids, TOP)
        constrained += [r[0] for r in ranked_ids]
        ranked = [[id_to_tool.get(i, i) for i in r] for r in ranked_ids]
        rankings_by_set[name] = ranked
        result.update(set_metrics(name, ranked, rows, seconds))
        invalid += [i not in id_to_tool for i in decoding.unconstrained_argmax(logprobs)]
    if memorization:
        logprobs = decoding.next_token_logprobs(model, tokenizer, [ex["messages"][:-1] for ex in memorization])
        top = [r[0] for r in decoding.rank_tools(logprobs, tool_ids, 1)]
        constrained += top
        predicted = [id_to_tool.get(i, i) for i in top]
        gold = [ex["messages"][-1]["content"] for ex in memorization]
        result["memorization/accuracy"] = metrics.accuracy(predicted, gold)
        result["memorization/f1"] = metrics.macro_f1(predicted, gold)
        invalid += [i not in id_to_tool for i in decoding.unconstrained_argmax(logprobs)]
    if do_agent and agent_test:
        agent, agent_invalid = agent_metrics(model, tokenizer, tool_list + [FINISH], agent_test)
        result.update(agent)
        invalid += agent_invalid
    # measured, not assumed: the constrained predictions that are not a real tool (0 when the mask works)
    result["invalid_tool_rate"] = sum(i not in id_to_tool for i in constrained) / len(constrained) if constrained else 0.0
    result["invalid_tool_rate_unconstrained"] = sum(invalid) / len(invalid) if invalid else 0.0
    return result, rankings_by_set


def _parse_json(text):
    try:
        value = json.loads(text)
        return value if isinstance(value, dict) else None
    except (json.JSONDecodeError, TypeError):
        m = re.search(r"\{.*\}", text or "", re.S)
        return _parse_json(m.group(0)) if m and m.group(0) != text else None


def _norm(v):
    return " ".join(str(v).lower().split())


def arguments_correct(predicted_text, reference_text, documentation):
    """Parses as a JSON object, has every required parameter, and every reference value matches (case/space-folded)."""
    predicted, reference = _parse_json(predicted_text), _parse_json(reference_text) or {}
    if predicted is None:
        return False
    required = (documentation or {}).get("required") or []
    return all(r in predicted for r in required) and all(
        k in predicted and _norm(predicted[k]) == _norm(v) for k, v in reference.items())


def agent_metrics(model, tokenizer, action_tokens, trajectories):
    """Step by step with the true history: tool choice at each action, arguments after each tool, Finish at the end."""
    action_ids = tokenizer.convert_tokens_to_ids(action_tokens)
    id_to_token = dict(zip(action_ids, action_tokens))
    actions = set(action_tokens)
    tool_right, arg_right, finish_right, complete, invalid = [], [], [], [], []
    for ex in trajectories:
        msgs, all_right, finish_steps = ex["messages"], True, []
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            if m["content"] in actions:                     # an action step
                logprobs = decoding.next_token_logprobs(model, tokenizer, [msgs[:i]])
                predicted = id_to_token[decoding.rank_tools(logprobs, action_ids, 1)[0][0]]
                invalid.append(decoding.unconstrained_argmax(logprobs)[0] not in id_to_token)
                finish_steps.append((predicted == FINISH, m["content"] == FINISH))
                if m["content"] != FINISH:
                    tool_right.append(predicted == m["content"])
                    all_right &= tool_right[-1]
            elif i >= 2 and msgs[i - 2]["content"] in actions - {FINISH} and m.get("loss"):
                # the arguments of a tool call (truncated ones carry no loss)
                doc = _parse_json(msgs[i - 1]["content"][len(ASK_INPUT):])
                arg_right.append(arguments_correct(decoding.generate_text(model, tokenizer, msgs[:i]), m["content"], doc))
                all_right &= arg_right[-1]
        finish_ok = all(p == r for p, r in finish_steps)
        finish_right.append(finish_ok)
        complete.append(all_right and finish_ok)
    mean = lambda xs: sum(xs) / len(xs) if xs else 0.0
    return {"agent/tool_selection_accuracy": mean(tool_right), "agent/argument_accuracy": mean(arg_right),
            "agent/finish_accuracy": mean(finish_right), "agent/completion_rate": mean(complete),
            "agent/trajectories": len(trajectories), "agent/action_steps": len(tool_right),
            "agent/argument_steps": len(arg_right)}, invalid


def baseline_systems(tools, sets):
    documents = {t: v["documentation"] for t, v in tools.items()}
    out, rankings = {}, {}
    for name, rank in (("bm25", baselines.bm25_rank), ("minilm", baselines.dense_rank)):
        out[name], rankings[name] = {}, {}
        for set_name, rows in sets.items():
            t0 = time.time()
            ranked = rank(documents, [r[0] for r in rows], TOP)
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
    p.add_argument("--runs", help="TensorBoard folder for the loss plot (default: <model>/../runs)")
    args = p.parse_args(argv)
    if args.output_dir:   # the stages after memorization (memorization alone does not retrieve from queries)
        args.model += [os.path.join(args.output_dir, STAGES[s].folder) for s in list(STAGES)[1:]
                       if os.path.exists(os.path.join(args.output_dir, STAGES[s].folder, "stage.json"))]
        args.data = args.data or os.path.join(args.output_dir, "data")
        args.out = args.out or os.path.join(args.output_dir, "eval")
        args.runs = args.runs or os.path.join(args.output_dir, "runs")
    if not (args.data and args.out):
        p.error("give --data and --out, or --output-dir")
    try:
        evaluate(args)
    except EvalError as e:
        sys.exit(f"toolgen-evaluate: error: {e}")


def evaluate(args):
    for path in args.model:
        check_stage_folder(path)
    tool_tokens = load_json(os.path.join(args.data, "tool_tokens.json"))
    tools, candidates = tool_tokens["tools"], [t for t in tool_tokens["tokens"] if t != FINISH]
    sets = query_sets(args.data, args.queries, tools)
    memorization = load_json(os.path.join(args.data, STAGES["memorization"].file))
    agent_test = load_json(os.path.join(args.data, "agent_test.json"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    systems, rankings = {}, {}
    if not args.no_baselines:
        systems, rankings = baseline_systems(tools, sets)
    for i, stage_dir in enumerate(args.model):
        tokenizer, model, _ = models.load_stage(stage_dir)
        if set(candidates) - set(tokenizer.get_vocab()):
            raise EvalError(f"{stage_dir} was trained without some tokens of {args.data}/tool_tokens.json")
        model.to(device).eval()
        if i == 0 and not args.no_base:
            with model.disable_adapter():   # the same base with the same initial tool rows, no training
                systems["base"], rankings["base"] = model_system(model, tokenizer, candidates, sets, memorization, [], False)
        name = f"toolgen/{os.path.basename(os.path.normpath(stage_dir))}"
        is_agent = load_json(os.path.join(stage_dir, "stage.json"))["stage"] == "agent"
        systems[name], rankings[name] = model_system(model, tokenizer, candidates, sets, memorization, agent_test,
                                                     is_agent)
        del model
    runs = args.runs or (os.path.join(os.path.dirname(os.path.normpath(args.model[0])), "runs") if args.model else None)
    write_report(args.out, systems, rankings, sets, runs)
    print(open(os.path.join(args.out, "metrics.md")).read())


if __name__ == "__main__":
    main()
