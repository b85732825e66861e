"""The command that runs a trained agent stage on one request (the loop itself: toolgen/agent.py).

    python -m toolgen.agent --model finetuned_toolgen_model/agent_tuning --query "What is the weather in Osaka?" \
        --executor callables:my_tools.FUNCTIONS --transcript run.json           (console: toolgen-agent)

Every flag and file is checked before the model loads; a user's mistake is one line naming the flag or the file.
"""

import argparse
import json
import os
import sys

import torch

from toolgen.agent import Agent, AgentConfig, ModelPolicy
from toolgen.data.references import ORDERS
from toolgen.executors import build_executor
from toolgen.toolset import AgentError, Toolset, context_budget, trained_input_doc, trained_observation


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block
        sys.exit(f"toolgen-agent: error: {message}")


def parse_args(argv=None):
    p = _Parser(prog="toolgen-agent", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a finished stage folder (the agent stage)")
    p.add_argument("--tools", help="tool_tokens.json (of a prepared or stage folder), a .jsonl catalog or a spec file "
                                   "(default: the --model folder's tools)")
    p.add_argument("--query", help="the request (default with replay:FILE: the record's input)")
    p.add_argument("--executor", default="none", help="callables:module.attr (a dict {tool token or API name: "
                   "callable}) | http (the catalog's specs, RAPIDAPI_KEY) | replay:FILE (gold calls) | none (default)")
    p.add_argument("--max-steps", type=int, default=AgentConfig.max_steps)
    p.add_argument("--timeout", type=float, default=AgentConfig.timeout, help="seconds per tool call")
    p.add_argument("--context-budget", type=int, help="tokens (0: no limit; default: 4096, or the agent stage's "
                   "max_length when larger)")
    p.add_argument("--think", action=argparse.BooleanOptionalAction, default=False,
                   help="a Thought turn before each action (as the model was trained: with or without thoughts)")
    p.add_argument("--argument-tokens", type=int, default=AgentConfig.argument_tokens,
                   help="most new tokens of an arguments answer")
    p.add_argument("--thought-tokens", type=int, default=AgentConfig.thought_tokens, help="most new tokens of a thought")
    p.add_argument("--observation-chars", type=int, help="characters of a tool result shown to the model (JSON "
                   "stays valid; default: as the stage's prepared folder, else 2000)")
    p.add_argument("--observation-order", choices=ORDERS, help="what fills them first (default: as the stage's "
                   "prepared folder, toolgen-prepare --observation-order, else document)")
    p.add_argument("--block-repeats", action="store_true",
                   help="a call made twice in a row with the same arguments: its tool is not offered next")
    p.add_argument("--transcript", help="write the transcript (JSON) here")
    args = p.parse_args(argv)
    for flag, value in (("--max-steps", args.max_steps), ("--timeout", args.timeout),
                        ("--argument-tokens", args.argument_tokens), ("--thought-tokens", args.thought_tokens),
                        ("--observation-chars", 1 if args.observation_chars is None else args.observation_chars)):
        if value <= 0:
            p.error(f"{flag} {value}: must be positive")
    if (args.context_budget or 0) < 0:
        p.error(f"--context-budget {args.context_budget}: must be positive (0: no limit)")
    return args


def check_inputs(args):
    """Everything but the model, before the model loads: -> (toolset, executor, request)."""
    for needed in ("stage.json", os.path.join("adapter", "adapter_config.json")):
        if not os.path.isfile(os.path.join(args.model, needed)):
            raise AgentError(f"--model {args.model}: not a finished stage folder ({needed} is missing)")
    chars, order = trained_observation(args.model) or (AgentConfig.observation_chars, AgentConfig.observation_order)
    args.observation_chars, args.observation_order = args.observation_chars or chars, args.observation_order or order
    try:
        # a catalog or spec file gets the input docs the model learnt (toolgen-prepare --input-doc); the model's own
        # folder lists the learnt docs themselves
        learnt = trained_input_doc(args.model) if args.tools else None
        if learnt is None and args.tools:
            print(f"toolgen-agent: warning: the data {args.model} trained on is gone, so which input docs it learnt is "
                  "unknown: a catalog or spec file's tools show parameter names only", file=sys.stderr)
        tools = Toolset.load(args.tools or args.model, params=learnt == "params")
    except AgentError as e:
        raise AgentError(f"--tools: {e}") from None
    executor, replay_text = build_executor(args.executor, args.timeout, args.observation_chars, args.observation_order)
    executor.check(tools)
    request = args.query or replay_text
    if not request or not request.strip():
        raise AgentError("--query: give the request (or a replay:FILE record with an 'input')")
    out_dir = os.path.dirname(os.path.abspath(args.transcript)) if args.transcript else None
    if out_dir and not os.path.isdir(out_dir):
        raise AgentError(f"--transcript {args.transcript}: the folder {out_dir} does not exist")
    return tools, executor, request.strip()


def show(t):
    for s in t.steps:
        print(f"[{s.index + 1}] {s.token} {json.dumps(s.arguments, ensure_ascii=False) if s.arguments else s.answers}")
        if s.observation is not None:
            print(f"    -> {s.observation[:300]}")
    print(f"stop: {t.stop_reason}; final answer: {json.dumps(t.final_answer, ensure_ascii=False)}")


def main(argv=None):
    args = parse_args(argv)
    try:
        tools, executor, request = check_inputs(args)
        from toolgen import quiet  # noqa: F401  (before the libraries load: silences their start-up notices)
        from toolgen.models import load_stage, merge_for_inference
        from toolgen.parent_scores import attach
        tokenizer, model, _ = load_stage(args.model)
        try:
            attach(model, args.model)   # an addition that keeps the parent's scores of the old tools (before merging)
        except ValueError as e:   # its parent-scores file does not fit the model
            raise AgentError(str(e)) from None
        merge_for_inference(model)
        model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        config = AgentConfig(max_steps=args.max_steps, timeout=args.timeout, think=args.think,
                             context_budget=context_budget(args.context_budget, args.model, AgentConfig.context_budget),
                             thought_tokens=args.thought_tokens, block_repeats=args.block_repeats,
                             argument_tokens=args.argument_tokens, observation_chars=args.observation_chars,
                             observation_order=args.observation_order)
        transcript = Agent(ModelPolicy(model, tokenizer), tools, executor, config).run(request)
        if args.transcript:
            transcript.save(args.transcript)
    except AgentError as e:
        sys.exit(f"toolgen-agent: error: {e}")
    show(transcript)


if __name__ == "__main__":
    main()
