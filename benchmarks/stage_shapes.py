"""Synthetic stage files with the length shapes of the real ones, for the speed benchmark (benchmarks/throughput.py).

    python benchmarks/stage_shapes.py --out DIR --model random:llama-3.2-1b --examples 1600 1600 400

writes DIR/tool_tokens.json (46,985 tool tokens, ToolGen's count) and the three stage files, in the format
toolgen-prepare writes, so that `toolgen/train.py` and the Trainer baselines read them as any prepared data:
  memorization: a documentation prompt of 80-320 tokens -> one tool token (+ end of turn);
  retrieval:    a query of 20-120 tokens -> one tool token;
  agent:        a system prompt and a request, then 12 assistant turns of 10-60 tokens (the loss) between
                observations, 1,500-4,000 tokens in all.
Text is random words of the shipped sample's documentation; the lengths are aimed with the model's own tokenizer and
written to DIR/lengths.json as they came out (the FLOP count of the benchmark reads them).
"""

import argparse
import json
import os
import random
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolgen import models  # noqa: E402
from toolgen.collate import tokenize_messages  # noqa: E402
from toolgen.config import STAGES  # noqa: E402
from toolgen.loss import IGNORE  # noqa: E402

TOOL_TOKENS = 46_985
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toolgen", "data", "sample",
                      "catalog.jsonl")
# stage: (prompt tokens, assistant turns, tokens per turn, whole example)
SHAPES = {"memorization": ((80, 320), 1, None, None), "retrieval": ((20, 120), 1, None, None),
          "agent": ((60, 200), 12, (10, 60), (1500, 3900))}
SYSTEM = "You are an agent that solves the user's task with tools."


def tool_tokens(n):
    return [f"<<tool {i // 4}&&endpoint {i % 4}>>" for i in range(n)]


class Words:
    """Random text of about n tokens: words of the sample's documentation, at the tokenizer's measured rate."""

    def __init__(self, tokenizer, rng):
        with open(SAMPLE, encoding="utf-8") as f:
            text = f.read()
        self.words = sorted(set(re.findall(r"[A-Za-z]{3,}", text)))
        self.rng = rng
        probe = " ".join(self.rng.choice(self.words) for _ in range(2000))
        self.per_word = len(tokenizer(probe, add_special_tokens=False)["input_ids"]) / 2000

    def __call__(self, n):
        return " ".join(self.rng.choice(self.words) for _ in range(max(1, round(n / self.per_word))))


def example(stage, words, tools, rng):
    (plo, phi), turns, span, whole = SHAPES[stage]
    if turns == 1:
        return [{"role": "user", "content": words(rng.randint(plo, phi)), "loss": False},
                {"role": "assistant", "content": rng.choice(tools), "loss": True}]
    total, request = rng.randint(*whole), rng.randint(plo, phi)
    answers = [rng.randint(*span) for _ in range(turns)]
    observation = max(1, (total - request - sum(answers)) // (turns - 1))
    messages = [{"role": "system", "content": SYSTEM, "loss": False},
                {"role": "user", "content": words(request), "loss": False}]
    for i, n in enumerate(answers):
        messages.append({"role": "assistant", "content": f"{rng.choice(tools)} {words(n - 1)}", "loss": True})
        if i < turns - 1:
            messages.append({"role": "user", "content": words(observation), "loss": False})
    return messages


def write(out, model, counts, seed=0, n_tools=TOOL_TOKENS):
    """The tool tokens, the three stage files and their measured lengths -> {stage: {"tokens": [...], ...}}."""
    os.makedirs(out, exist_ok=True)
    tokenizer = models.load_tokenizer(models.resolve_model(model))
    tools = tool_tokens(n_tools)
    with open(os.path.join(out, "tool_tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"tokens": tools, "distractors": 0, "tools": {}}, f)
    tokenizer.add_tokens(tools)
    rng = random.Random(seed)
    words = Words(tokenizer, rng)
    lengths = {}
    for stage, n in zip(SHAPES, counts):
        records = [{"messages": example(stage, words, tools, rng)} for _ in range(n)]
        with open(os.path.join(out, STAGES[stage].file), "w", encoding="utf-8") as f:
            json.dump(records, f)
        tokenized = [tokenize_messages(tokenizer, r["messages"]) for r in records]
        lengths[stage] = {"tokens": [len(t["input_ids"]) for t in tokenized],
                          # labels are shifted in the loss: the first label never counts
                          "targets": [sum(label != IGNORE for label in t["labels"][1:]) for t in tokenized]}
    with open(os.path.join(out, "lengths.json"), "w", encoding="utf-8") as f:
        json.dump(lengths, f)
    return lengths


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="random:llama-3.2-1b")
    p.add_argument("--examples", type=int, nargs=3, default=[1600, 1600, 400], metavar=("MEM", "RET", "AGENT"))
    p.add_argument("--tools", type=int, default=TOOL_TOKENS)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    lengths = write(args.out, args.model, args.examples, args.seed, args.tools)
    for stage, v in lengths.items():
        t = v["tokens"]
        print(f"{stage}: {len(t)} examples, tokens {min(t)}-{max(t)} (mean {sum(t) / len(t):.0f}), "
              f"targets per example {sum(v['targets']) / len(t):.1f}")


if __name__ == "__main__":
    main()
