"""Speed of the agent loop's arguments turn: `decoding.generate_texts` (what the loop's batched policy calls) on the
first arguments turn of held-out requests, with the stage's adapter as loaded (peft runs LoRA beside each projection
and copies the tool table every forward) and merged into the weights (`models.merge_for_inference`, what
toolgen.evaluate and toolgen.agent now do).

    python benchmarks/agent_decode.py --model RUN/agent_tuning --data RUN/data [--source complexfuncbench]
        [--rows 64] [--repeats 3] [--out result.json]

Each prompt is the loop's own: system, request, "Generate the action.", the gold first tool token, "Give the input"
+ its documentation. Both variants run the same prompts, interleaved, `--repeats` times after one warm-up each.
Printed per variant: seconds per call (median, min-max), the longest answer in tokens (re-tokenized) and ms per
decoding step (seconds / that length), and the share of answers equal to the unmerged model's (merging is exact up
to bf16 rounding; greedy decoding can still part at a near tie).
"""

import argparse
import json
import os
import statistics
import time

import torch

from toolgen import decoding, models
from toolgen.data.stages import AGENT_SYSTEM, ASK_ACTION, ASK_INPUT
from toolgen.toolset import Toolset


def first_turns(data_dir, source, rows):
    """The loop's messages up to the first arguments turn of the first `rows` held-out requests of `source`."""
    with open(os.path.join(data_dir, "agent_e2e_test.json"), encoding="utf-8") as f:
        records = [r for r in json.load(f) if r["source"] == source][:rows]
    if not records:
        raise SystemExit(f"{data_dir}/agent_e2e_test.json: no held-out request of source {source!r}")
    tools = Toolset.load(os.path.join(data_dir, "tool_tokens.json"))
    out = []
    for r in records:
        tool = tools.get(r["calls"][0]["token"])
        out.append([{"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": r["request"]},
                    {"role": "user", "content": ASK_ACTION}, {"role": "assistant", "content": tool.token},
                    {"role": "user", "content": ASK_INPUT + tool.input_doc}])
    return out


def timed(model, tokenizer, prompts, max_new_tokens):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    texts = decoding.generate_texts(model, tokenizer, prompts, max_new_tokens)
    sync()
    return time.perf_counter() - start, texts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a finished stage folder")
    p.add_argument("--data", required=True, help="the prepared folder with agent_e2e_test.json")
    p.add_argument("--source", default="complexfuncbench")
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=512, help="the loop's argument budget")
    p.add_argument("--out", help="write the figures here (JSON)")
    args = p.parse_args(argv)
    prompts = first_turns(args.data, args.source, args.rows)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = {}
    for name in ("adapter", "merged"):
        tokenizer, model, _ = models.load_stage(args.model)
        if name == "merged" and not models.merge_for_inference(model):
            raise SystemExit(f"{args.model}: a quantized base is not merged; nothing to compare")
        variants[name] = model.to(device).eval()
    seconds, texts = {n: [] for n in variants}, {}
    for n, model in variants.items():   # warm-up (allocator, kernels), not timed
        _, texts[n] = timed(model, tokenizer, prompts, args.max_new_tokens)
    for _ in range(args.repeats):
        for n, model in variants.items():
            s, out = timed(model, tokenizer, prompts, args.max_new_tokens)
            seconds[n].append(s)
            texts[n] = out
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    result = {"card": card, "rows": len(prompts), "repeats": args.repeats, "source": args.source, "variants": {}}
    print(f"{len(prompts)} rows of {args.source}, {card}\n"
          "| adapter | s per call (median) | min-max | longest answer (tokens) | ms per step | answers = adapter's |\n"
          "|---|---|---|---|---|---|")
    for n in variants:
        longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts[n])
        med = statistics.median(seconds[n])
        same = sum(a == b for a, b in zip(texts[n], texts["adapter"])) / len(prompts)
        result["variants"][n] = {"seconds": seconds[n], "median_s": med, "longest_tokens": longest,
                                 "ms_per_step": 1000 * med / max(longest, 1), "same_answers": same}
        print(f"| {n} | {med:.3f} | {min(seconds[n]):.3f}-{max(seconds[n]):.3f} | {longest} | "
              f"{1000 * med / max(longest, 1):.1f} | {same:.3f} |")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
