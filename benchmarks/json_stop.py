"""CPU cost of the agent's JSON stop per generation (toolgen/decoding.py JsonObjectDone), against decoding every row
whole at every step (what it did before). Rows are a JSON string that never closes, so no row stops early: the worst
case of an arguments turn that runs to its budget.

    python benchmarks/json_stop.py [--tokenizer gguf:smollm2] [--rows 16 64] [--tokens 128 512] [--repeats 5]

Prints seconds per whole generation (the criterion alone, called once per step as generate does), median and
min-max over the repeats.
"""

import argparse
import statistics
import time

import torch

from toolgen import models
from toolgen.decoding import JsonObjectDone, json_object_done


def whole_text(tokenizer, ids, prompt):
    """The earlier criterion: every row decoded whole, then scanned from the start."""
    texts = tokenizer.batch_decode(ids[:, prompt:], skip_special_tokens=True)
    return torch.tensor([json_object_done(t) for t in texts])


def generation(check, ids, prompt, steps):
    start = time.perf_counter()
    for n in range(1, steps + 1):
        check(ids[:, :prompt + n])
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", default="gguf:smollm2", help="a model name toolgen.models resolves")
    p.add_argument("--rows", type=int, nargs="+", default=[16, 64])
    p.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    tokenizer = models.load_tokenizer(models.resolve_model(args.tokenizer))
    body = tokenizer('{"search_key": "' + "eyJhbGciOiJIUzI1NiJ9" * 200, add_special_tokens=False)["input_ids"]
    prompt = 8
    print("| rows | new tokens | whole text each step (s) | new tokens only (s) |\n|---|---|---|---|")
    for rows in args.rows:
        for steps in args.tokens:
            ids = torch.tensor([[0] * prompt + body[:steps]] * rows)
            old, new = [], []
            for _ in range(args.repeats):   # interleaved
                old.append(generation(lambda x: whole_text(tokenizer, x, prompt), ids, prompt, steps))
                stop = JsonObjectDone(tokenizer, prompt)
                new.append(generation(lambda x: stop(x, None), ids, prompt, steps))
            cell = lambda xs: f"{statistics.median(xs):.3f} ({min(xs):.3f}-{max(xs):.3f})"   # noqa: E731
            print(f"| {rows} | {steps} | {cell(old)} | {cell(new)} |")


if __name__ == "__main__":
    main()
