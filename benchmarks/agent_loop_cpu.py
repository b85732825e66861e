"""The CPU side of batched end-to-end runs: how long the loops themselves take per round when the model costs nothing.

    python benchmarks/agent_loop_cpu.py --data DATA --tokenizer STAGE/tokenizer [--source complexfuncbench]
        [--max-steps 14] [--repeats 3]

The real loop (toolgen.agent.run_e2e with all of a source's held-out requests at once), its prompt cache, the replay
executor and BatchingPolicy's gathering, with a model that answers at once: random tool scores at each action, and a
fixed JSON answer at each arguments turn (so most calls fail and the loops run to --max-steps, the longest rounds).
What a GPU run spends beyond this is the model's. Prints a table: wall and CPU seconds, batches, their median size,
and the median time between batches (BatchingPolicy's wait of 0.5 s after the last arrival included).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolgen.agent import AgentConfig, ModelPolicy, run_e2e  # noqa: E402
from toolgen.batching import BatchingPolicy  # noqa: E402
from toolgen.e2e_merge import load_requests  # noqa: E402
from toolgen.toolset import Toolset  # noqa: E402

ANSWER = '{"query": "x"}'


class InstantPolicy(BatchingPolicy):
    """BatchingPolicy whose batches cost nothing: it records when each ran and how many loops it held."""

    def __init__(self, policy, vocab):
        self.vocab, self.batches, self.answer = vocab, [], policy.tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
        super().__init__(policy)

    def _run(self, batch):
        self.batches.append((time.monotonic(), len(batch)))
        for slot in batch:
            slot["result"] = torch.randn(self.vocab) if slot["kind"][0] == "logprobs" else (self.answer, True)


def one_run(tokenizer, requests, tools, max_steps):
    made = []

    def instant(policy):
        made.append(InstantPolicy(policy, len(tokenizer)))
        return made[-1]
    import toolgen.batching
    real, toolgen.batching.BatchingPolicy = toolgen.batching.BatchingPolicy, instant   # run_e2e builds its own
    try:
        wall, cpu = time.monotonic(), time.process_time()
        transcripts, _ = run_e2e(None, tokenizer, requests, tools, AgentConfig(max_steps=max_steps),
                                 policy=ModelPolicy(None, tokenizer), width=0)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
    finally:
        toolgen.batching.BatchingPolicy = real
    times, sizes = zip(*made[0].batches)
    gaps = [b - a for a, b in zip(times, times[1:])]
    return {"wall_s": wall, "cpu_s": cpu, "batches": len(sizes), "median_batch": statistics.median(sizes),
            "median_gap_s": statistics.median(gaps) if gaps else 0.0,
            "steps": sum(len(t.steps) for t in transcripts), "requests": len(transcripts)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a prepared folder with agent_e2e_test.json and tool_tokens.json")
    p.add_argument("--tokenizer", required=True, help="a tokenizer folder (a stage's tokenizer/, with the tool tokens)")
    p.add_argument("--source", default="complexfuncbench")
    p.add_argument("--max-steps", type=int, default=14)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    requests = load_requests(args.data, error=SystemExit).get(args.source)
    if not requests:
        sys.exit(f"agent_loop_cpu: {args.data}/agent_e2e_test.json has no {args.source} requests")
    tools = Toolset.load(os.path.join(args.data, "tool_tokens.json"))
    runs = [one_run(tokenizer, requests, tools, args.max_steps) for _ in range(args.repeats)]
    print(f"{len(requests)} {args.source} requests at once, at most {args.max_steps} steps, {os.cpu_count()} CPUs; "
          f"median of {args.repeats} runs (min-max)\n")
    print("| requests | steps | wall s | CPU s | batches | median batch | median s between batches |")
    print("|---|---|---|---|---|---|---|")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    span = {k: (min(r[k] for r in runs), max(r[k] for r in runs)) for k in ("wall_s", "cpu_s")}
    print(f"| {med['requests']:.0f} | {med['steps']:.0f} | {med['wall_s']:.1f} ({span['wall_s'][0]:.1f}-"
          f"{span['wall_s'][1]:.1f}) | {med['cpu_s']:.1f} ({span['cpu_s'][0]:.1f}-{span['cpu_s'][1]:.1f}) | "
          f"{med['batches']:.0f} | {med['median_batch']:.0f} | {med['median_gap_s']:.2f} |")


if __name__ == "__main__":
    main()
