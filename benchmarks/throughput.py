"""Training throughput: this project's training step against the HF Trainer + peft baseline, same card, same examples.

    python benchmarks/throughput.py                        # one GPU: Llama-3.2-1B shape, all three stage shapes
    python benchmarks/throughput.py --tiny --steps 3       # CPU smoke run of the script itself

Model: the Llama-3.2-1B architecture built from its config with random weights (the real weights cannot be downloaded
here; speed does not depend on their values), vocabulary 128,256 + 46,985 tool tokens, bf16 weights under bf16
autocast (as `accelerate launch --mixed_precision bf16` and the Trainer's bf16=True run them), LoRA r=16 on all linear
layers plus trainable tool-token rows (peft trainable_token_indices).
  baseline: transformers Trainer + peft, vocabulary resized to exactly 175,241, pad-to-longest (right) batches,
            the default loss over full logits.
  ours, one variant per optimisation, each adding to the one before (toolgen/train.py has each as a switch):
    head-at-targets: vocabulary padded to a multiple of 64, left-padded length-grouped batches, the LM head only at
                     the target positions (toolgen.loss.target_loss);
    +sparse-rows:    gradient for the tool rows only (train.sparse_tool_rows, toolgen/tool_rows.py);
    +packing-sdpa:   each batch packed into one row, no padding (train.packing), SDPA with the document mask;
    +packing-flex:   the same with flex attention (model.attn_implementation=flex_attention, block-sparse mask);
    +compile:        torch.compile of each decoder layer (train.compile, accelerate's regional compilation).
  `ours` in the JSON is the variant named by --ours (default: the last one).
Data: synthetic token ids with the length shapes of the stage files (memorization: a documentation prompt of
80-320 tokens + tool token + end; retrieval: a query of 20-120 tokens + tool token + end; agent: 1,500-4,000 tokens
with 12 answer spans of 10-60 tokens). Every system sees the same examples in the same order, the same batch size.
Every system first runs one untimed pass over all its batches (compilation and autotuning happen there, as they
happen once in a real run), then the timed steps.
MFU = 6 * N * (non-pad tokens/s) / measured bf16 matmul peak of this card, N = parameters of the base model (tied
embedding counted once); attention FLOPs are not counted.
"""

import argparse
import gc
import json
import os
import platform
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from accelerate.utils import compile_regions  # noqa: E402

from toolgen.collate import IGNORE, LeftPadCollator, PackedCollator, num_tokens  # noqa: E402
from toolgen.tool_rows import sparse_tool_rows  # noqa: E402
from toolgen.loss import target_loss  # noqa: E402

BASE_VOCAB, TOOL_TOKENS = 128_256, 46_985
SHAPES = {  # stage: (batch size, prompt length range, number of answer spans, span length range)
    "memorization": (16, (80, 320), 1, (2, 2)),
    "retrieval": (16, (20, 120), 1, (2, 2)),
    "agent": (2, (1500, 4000), 12, (10, 60)),
}


def llama_1b_config(tiny):
    from transformers import LlamaConfig
    if tiny:
        return LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaConfig(vocab_size=BASE_VOCAB, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5)


def examples(stage, n, vocab, tool_ids, seed=0, scale=1.0):
    """Synthetic examples: {"input_ids", "labels"} with the stage's length shape; targets are tool ids or text."""
    rng = random.Random(seed)
    _, (lo, hi), spans, (slo, shi) = SHAPES[stage]
    out = []
    for _ in range(n):
        length = max(8, int(rng.randint(lo, hi) * scale))
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        labels = [IGNORE] * length
        if spans == 1:   # prompt, then the tool token and the end-of-turn token carry loss
            ids += [rng.choice(tool_ids), 2]
            labels += ids[-2:]
        else:
            for s in range(spans):
                start = int(length * (s + 1) / (spans + 1))
                for i in range(start, min(length, start + rng.randint(slo, shi))):
                    labels[i] = ids[i]
        out.append({"input_ids": ids, "labels": labels})
    return out


VARIANTS = {  # name: (sparse tool rows, packing, attention, compile)
    "head-at-targets": (False, False, "sdpa", False),
    "+sparse-rows": (True, False, "sdpa", False),
    "+packing-sdpa": (True, True, "sdpa", False),
    "+packing-flex": (True, True, "flex_attention", False),
    "+compile": (True, True, "flex_attention", True),
}
PACK_MULTIPLE = {"memorization": 256, "retrieval": 256, "agent": 1024}   # few distinct shapes for compiled kernels


def build(config, padded, device, lora_r=16, attn="sdpa", sparse=False, compile=False):
    import copy

    from peft import LoraConfig, get_peft_model
    config = copy.deepcopy(config)   # resize_token_embeddings changes the config's vocab_size
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if device == "cuda" else torch.float32)
    model.config.use_cache = False
    base_vocab = config.vocab_size
    n_tools = TOOL_TOKENS if base_vocab == BASE_VOCAB else 100
    model.resize_token_embeddings(base_vocab + n_tools, pad_to_multiple_of=64 if padded else None, mean_resizing=False)
    tool_ids = list(range(base_vocab, base_vocab + n_tools))
    n_params = sum(p.numel() for p in model.parameters())
    peft_config = LoraConfig(r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, target_modules="all-linear",
                             trainable_token_indices=tool_ids, task_type="CAUSAL_LM")
    model.set_attn_implementation("sdpa" if device == "cpu" else attn)   # flex attention has no backward on CPU
    model = get_peft_model(model, peft_config)
    if sparse:
        sparse_tool_rows(model)
    if compile:
        model = compile_regions(model, dynamic=True)
    return model, tool_ids, base_vocab + n_tools, n_params


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def run_ours(model, data, batch_size, vocab, steps, device, pack_multiple=None):
    """The project's step: length-grouped left-padded (or packed) batches, loss only at target positions, AdamW."""
    collate = PackedCollator(0, pack_multiple) if pack_multiple else LeftPadCollator(pad_token_id=0)
    # length grouping: sort each window of 16 batches by length, so a batch holds similar lengths (less padding)
    window = batch_size * 16
    order = []
    for start in range(0, len(data), window):
        order += sorted(range(start, min(start + window, len(data))), key=lambda i: len(data[i]["input_ids"]))
    batches = [collate([data[i] for i in order[s:s + batch_size]]) for s in range(0, len(order), batch_size)]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, fused=device == "cuda")
    return _timed(batches, steps, len(batches), device, lambda b: _ours_step(model, b, vocab, optimizer, params))


def _ours_step(model, batch, vocab, optimizer, params):
    n_targets = (batch["labels"][:, 1:] != IGNORE).sum()
    with torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16):
        loss = target_loss(model, batch, vocab) / n_targets
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _timed(batches, steps, warmup, device, step_fn):
    dev_batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
    tokens = targets = 0
    for i in range(warmup + steps):
        b = dev_batches[i % len(dev_batches)]
        if i == warmup:
            sync(device)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
        step_fn(b)
        if i >= warmup:
            tokens += int(num_tokens(b))
            targets += int((b["labels"][:, 1:] != IGNORE).sum())
    sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"tokens_per_s": tokens / seconds, "target_tokens_per_s": targets / seconds,
            "step_time_s": seconds / steps, "peak_mem_gib": peak}


def run_baseline(model, data, batch_size, steps, warmup, device):
    """transformers Trainer + peft as a user would write it: pad to longest, default loss."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        def __init__(self):
            self.t0, self.tokens, self.targets, self.step = None, 0, 0, 0

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                sync(device)
                if device == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == warmup + steps:
                sync(device)
                self.seconds = time.perf_counter() - self.t0

    class PadCollator(DataCollatorForSeq2Seq):
        """The stock collator, counting what each batch holds (Trainer shuffles: count what it really got)."""
        counts = []

        def __call__(self, features, return_tensors=None):
            batch = super().__call__(features, return_tensors)
            self.counts.append((int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != IGNORE).sum())))
            return batch

    n = (warmup + steps) * batch_size
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"], "attention_mask": [1] * len(e["input_ids"])}
            for e in (data * (1 + n // len(data)))[:n]]
    clock = Clock()
    tok = _PadOnly()
    args = TrainingArguments(output_dir="/tmp/toolgen-throughput-baseline", per_device_train_batch_size=batch_size,
                             max_steps=warmup + steps, learning_rate=1e-4, bf16=device == "cuda",
                             use_cpu=device == "cpu", report_to=[], logging_steps=10**9, save_strategy="no",
                             dataloader_drop_last=True, remove_unused_columns=False, max_grad_norm=1.0, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=PadCollator(tok, label_pad_token_id=IGNORE),
                      callbacks=[clock])
    trainer.train()
    timed = PadCollator.counts[-steps:]   # the batches of the timed steps
    tokens, targets = sum(t for t, _ in timed), sum(t for _, t in timed)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    return {"tokens_per_s": tokens / clock.seconds, "target_tokens_per_s": targets / clock.seconds,
            "step_time_s": clock.seconds / steps, "peak_mem_gib": peak}


class _PadOnly:
    """The bit of a tokenizer that DataCollatorForSeq2Seq needs: right padding with id 0."""
    padding_side, pad_token_id, model_input_names = "right", 0, ["input_ids", "attention_mask"]

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt"):
        longest = max(len(f["input_ids"]) for f in features)
        out = {k: torch.tensor([f[k] + [0] * (longest - len(f[k])) for f in features]) for k in ("input_ids", "attention_mask")}
        return out


def matmul_peak(device):
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(20):
        a @ b
    sync(device)
    return 20 * 2 * 8192**3 / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", nargs="+", default=list(SHAPES))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--ours", default=None, help="the variant reported as `ours` (default: the last one run)")
    p.add_argument("--steps", type=int, default=20, help="distinct batches: one untimed pass, then one timed pass")
    p.add_argument("--tiny", action="store_true", help="a tiny model on CPU: checks the script, measures nothing useful")
    p.add_argument("--append", action="store_true", help="add these stages to the results file already in --out "
                   "(one stage per command where a command's time is limited; same card only)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    config = llama_1b_config(args.tiny)
    peak_flops = matmul_peak(device)
    ours_name = args.ours or args.variants[-1]
    results = {"card": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
               "versions": {m: __import__(m).__version__ for m in ("torch", "transformers", "peft", "accelerate")},
               "command": " ".join(["python"] + sys.argv), "matmul_peak_tflops": peak_flops and peak_flops / 1e12,
               "ours": ours_name, "stages": {}, "variants": {}}
    for stage in args.stages:
        batch_size = SHAPES[stage][0]
        row = {}
        for system in ["baseline"] + args.variants:
            sparse, packing, attn, compile = VARIANTS.get(system, (False, False, "sdpa", False))
            model, tool_ids, vocab, n_params = build(config, padded=system != "baseline", device=device, attn=attn,
                                                     sparse=sparse, compile=compile)
            data = examples(stage, args.steps * batch_size, config.vocab_size, tool_ids,  # base ids
                            scale=0.1 if args.tiny else 1.0)
            try:
                if system == "baseline":
                    r = run_baseline(model, data * 2, batch_size, args.steps, args.steps, device)
                else:
                    r = run_ours(model, data, batch_size, vocab, args.steps, device, packing and PACK_MULTIPLE[stage])
            except Exception as e:   # one variant failing (e.g. a kernel missing on this card) must not lose the rest
                print(stage, system, "FAILED:", repr(e), flush=True)
                row[system] = {"error": repr(e)[:300]}
                del model
                gc.collect()
                continue
            r["mfu"] = 6 * n_params * r["tokens_per_s"] / peak_flops if peak_flops else None
            row[system] = r
            print(stage, system, json.dumps(r), flush=True)
            del model
            gc.collect()   # peft models hold reference cycles: without this the last variant's model stays allocated
            if device == "cuda":
                torch.cuda.empty_cache()
        results["variants"][stage] = row
        ok = [v for v in args.variants if "error" not in row[v]]
        chosen = ours_name if ours_name in ok else ok[-1]   # a failed variant is reported as failed, never as ours
        ours, base = row[chosen], row["baseline"]
        results["stages"][stage] = {
            "batch_size": batch_size, "ours_variant": chosen, "ours_tokens_per_s": ours["tokens_per_s"],
            "baseline_tokens_per_s": base["tokens_per_s"],
            "ours_target_tokens_per_s": ours["target_tokens_per_s"],
            "baseline_target_tokens_per_s": base["target_tokens_per_s"],
            "ours_peak_mem_gib": ours["peak_mem_gib"], "baseline_peak_mem_gib": base["peak_mem_gib"],
            "ours_step_time_s": ours["step_time_s"], "baseline_step_time_s": base["step_time_s"],
            "ours_mfu": ours["mfu"], "baseline_mfu": base["mfu"],
            "speedup": ours["tokens_per_s"] / base["tokens_per_s"],
            "memory_ratio": ours["peak_mem_gib"] / base["peak_mem_gib"] if base["peak_mem_gib"] else None}
    results["n_params"] = n_params
    os.makedirs(args.out, exist_ok=True)
    name = "throughput_tiny_cpu" if args.tiny else "throughput"
    if args.append and os.path.exists(os.path.join(args.out, f"{name}.json")):
        with open(os.path.join(args.out, f"{name}.json")) as f:
            old = json.load(f)
        if old["card"] != results["card"]:
            sys.exit(f"--append: the results file was measured on {old['card']}, this is {results['card']}")
        results["command"] = old["command"] + " ; " + results["command"]
        results["stages"], results["variants"] = {**old["stages"], **results["stages"]}, {**old["variants"], **results["variants"]}
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(results, f, indent=1)
    print(table(results) + "\n\n" + variants_table(results))
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(f"# Throughput: ours vs HF Trainer + peft\n\nCard: {results['card']}; versions {results['versions']};"
                f" bf16 matmul peak measured in the same run: {results['matmul_peak_tflops']} TFLOP/s.\n\n"
                f"Command: `{results['command']}`\n\n`ours` = variant `{ours_name}`.\n\n" + table(results)
                + "\n\nEvery variant (each adds one optimisation to the row above it):\n\n" + variants_table(results)
                + "\n\n" + __doc__.split("\n\n", 2)[2] + "\n")


F = lambda v, d=1: "—" if v is None else f"{v:.{d}f}"  # noqa: E731


def table(results):
    lines = ["| stage | B | ours tok/s | baseline tok/s | speed-up | ours target tok/s | baseline target tok/s | "
             "ours peak GiB | baseline peak GiB | mem ratio | ours step s | baseline step s | ours MFU |",
             "|---" * 13 + "|"]
    for stage, r in results["stages"].items():
        lines.append(f"| {stage} | {r['batch_size']} | {F(r['ours_tokens_per_s'], 0)} | {F(r['baseline_tokens_per_s'], 0)} | "
                     f"{F(r['speedup'], 2)}x | {F(r['ours_target_tokens_per_s'], 0)} | {F(r['baseline_target_tokens_per_s'], 0)} | "
                     f"{F(r['ours_peak_mem_gib'], 2)} | {F(r['baseline_peak_mem_gib'], 2)} | {F(r['memory_ratio'], 2)} | "
                     f"{F(r['ours_step_time_s'], 3)} | {F(r['baseline_step_time_s'], 3)} | {F(r['ours_mfu'], 3)} |")
    return "\n".join(lines)


def variants_table(results):
    lines = ["| stage | system | tok/s | vs baseline | target tok/s | peak GiB | mem ratio | step s | MFU |", "|---" * 9 + "|"]
    for stage, row in results["variants"].items():
        base = row["baseline"]
        for system, r in row.items():
            if "error" in r:
                lines.append(f"| {stage} | {system} | failed: {r['error'][:120]} |" + " |" * 6)
                continue
            lines.append(f"| {stage} | {system} | {F(r['tokens_per_s'], 0)} | {F(r['tokens_per_s'] / base['tokens_per_s'], 2)}x | "
                         f"{F(r['target_tokens_per_s'], 0)} | {F(r['peak_mem_gib'], 2)} | "
                         f"{F(r['peak_mem_gib'] / base['peak_mem_gib'] if base['peak_mem_gib'] else None, 2)} | "
                         f"{F(r['step_time_s'], 3)} | {F(r['mfu'], 3)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
