"""The HF Trainer + peft baselines of benchmarks/throughput.py: one system, one stage, one process.

    python benchmarks/trainer_baseline.py --system plain|tuned|tuned-eager --stage agent --data-dir DIR \
        --config launch/configs/llama-3.2-1b.yaml --model random:llama-3.2-1b --warmup 3 --steps 6 --out result.json

Same examples as the loop (toolgen.collate.stage_dataset: the same tokenization and loss masks), same batch size,
gradient accumulation, learning rate, LoRA (r, alpha, dropout, all linear layers) and trainable tool-token rows (peft
`trainable_token_indices`), bf16, AdamW, clipping at max_grad_norm. What differs is how a Trainer user sets it up:
  plain:       as usually written: vocabulary resized to exactly the tokenizer's length, the stock
               DataCollatorForSeq2Seq (pad to the longest, right), SDPA attention, the default loss over full logits.
  tuned:       what a careful user adds: vocabulary padded to a multiple of 64; padding-free batches
               (DataCollatorWithFlattening, each flattened row rounded up to a multiple of 256 tokens by a padding
               sequence without labels, so that compiled kernels see few shapes); Liger's kernels for RoPE, RMSNorm and
               SwiGLU; `torch_compile=True` with accelerate's regional compilation and dynamic shapes
               (ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION=1, ACCELERATE_DYNAMO_USE_DYNAMIC=1: without them every new
               row length compiles the whole model again); SDPA with the dense document mask transformers builds.
               With flex attention instead (block-sparse mask) it did not finish 35 steps in 3-4 minutes on an H200
               (a kernel compiled for every new length: results/throughput.md), so `tuned` no longer uses it.
               `train_sampling_strategy="group_by_length"` is on but moot: a flattened row has no padding to save.
  tuned-eager: `tuned` without compilation.
Liger's fused linear cross-entropy is not used by any system: it reads `lm_head.weight`, which under peft's trainable
tokens is the frozen table, so the tool rows' trained delta would never reach the logits or get a gradient through the
head (liger_kernel/transformers/model/llama.py unwraps only ModulesToSaveWrapper).
Timing: the clock starts after `--warmup` updates (compilation and autotuning happen there) and stops after `--steps`
more, with a CUDA synchronize at both ends; tokens are the non-pad tokens of the micro-batches of the timed updates.
Writes {"tokens_per_s", "update_s", "peak_mem_gib", "peak_reserved_gib", "first_loss", ...} to --out.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolgen import quiet  # noqa: E402,F401  (first: it silences start-up notices)

import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from toolgen import models  # noqa: E402
from toolgen.collate import stage_dataset  # noqa: E402
from toolgen.config import STAGES, load_config  # noqa: E402
from toolgen.loss import IGNORE  # noqa: E402

SYSTEMS = ("plain", "tuned", "tuned-eager")
PACK_MULTIPLE = 256


def build_model(system, model_name, cfg, tool_tokens, device):
    """Tokenizer + peft model as a Trainer user builds them (no toolgen helpers beyond finding the folder)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    path = models.resolve_model(model_name)
    tokenizer = models.load_tokenizer(path)
    tokenizer.add_tokens(tool_tokens)
    tool_ids = tokenizer.convert_tokens_to_ids(tool_tokens)
    cuda = device == "cuda"
    if system in ("tuned", "tuned-eager") and cuda:
        from liger_kernel.transformers import apply_liger_kernel_to_llama
        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16 if cuda else torch.float32,
                                                 attn_implementation="sdpa")
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=None if system == "plain" else 64)
    model.config.use_cache = False
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, trainable_token_indices=tool_ids, task_type="CAUSAL_LM")
    return tokenizer, get_peft_model(model, lora)


class Counting:
    """A collator that remembers the non-pad tokens of each micro-batch it made (the Trainer calls it in order)."""

    def __init__(self, collate, real_tokens):
        self.collate, self.real_tokens, self.counts = collate, real_tokens, []

    def __call__(self, features):
        batch = self.collate(features)
        self.counts.append(self.real_tokens(features, batch))
        return batch


def collator(system, tokenizer):
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening
    if system == "plain":
        pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE, padding=True)
        return Counting(pad, lambda f, b: int(b["attention_mask"].sum()))
    flatten = DataCollatorWithFlattening()

    def padded(features):   # round the flattened row up with a padding sequence: few distinct shapes to compile
        real = sum(len(f["input_ids"]) for f in features)
        tail = -real % PACK_MULTIPLE
        filler = [{"input_ids": [tokenizer.pad_token_id] * tail, "labels": [IGNORE] * tail}] if tail else []
        return flatten(list(features) + filler)
    return Counting(padded, lambda f, b: sum(len(x["input_ids"]) for x in f))


class Clock(TrainerCallback):
    """Wall time of updates warmup+1 .. warmup+steps, synchronized at both ends; the loss of the first update."""

    def __init__(self, warmup, steps, device):
        self.warmup, self.steps, self.device = warmup, steps, device
        self.t0 = self.seconds = self.first_loss = None

    def on_step_end(self, args, state, control, **kw):
        if state.global_step in (self.warmup, self.warmup + self.steps):
            if self.device == "cuda":
                torch.cuda.synchronize()
            if state.global_step == self.warmup:
                self.t0 = time.perf_counter()
            else:
                self.seconds = time.perf_counter() - self.t0

    def on_log(self, args, state, control, logs=None, **kw):
        if self.first_loss is None and logs and "loss" in logs:
            self.first_loss = logs["loss"]


def run(args):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.system == "tuned" and device == "cuda":
        os.environ.update(ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION="1", ACCELERATE_DYNAMO_USE_DYNAMIC="1")
    from transformers import Trainer, TrainingArguments
    cfg = load_config(args.config, [f"model.name={args.model}"])
    sc = cfg.stages[args.stage]
    with open(os.path.join(args.data_dir, "tool_tokens.json"), encoding="utf-8") as f:
        tool_tokens = json.load(f)["tokens"]
    tokenizer, model = build_model(args.system, args.model, cfg, tool_tokens, device)
    dataset, _ = stage_dataset(tokenizer, os.path.join(args.data_dir, STAGES[args.stage].file), sc.max_length)
    collate = collator(args.system, tokenizer)
    clock = Clock(args.warmup, args.steps, device)
    targs = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.out)), "trainer"), report_to=[],
        per_device_train_batch_size=sc.per_device_batch_size, gradient_accumulation_steps=sc.gradient_accumulation_steps,
        max_steps=args.warmup + args.steps, learning_rate=sc.learning_rate, warmup_steps=cfg.train.warmup_ratio,
        weight_decay=cfg.train.weight_decay, max_grad_norm=cfg.train.max_grad_norm, lr_scheduler_type="cosine",
        bf16=device == "cuda", use_cpu=device == "cpu", logging_steps=cfg.train.logging_steps, logging_first_step=True,
        save_strategy="no", seed=cfg.train.seed,
        dataloader_drop_last=True, remove_unused_columns=False, train_sampling_strategy="random" if args.system == "plain" else "group_by_length",
        torch_compile=args.system == "tuned" and device == "cuda")
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate, callbacks=[clock])
    trainer.train()
    ga = sc.gradient_accumulation_steps
    tokens = sum(collate.counts[args.warmup * ga:(args.warmup + args.steps) * ga])
    cuda = device == "cuda"
    return {"system": args.system, "stage": args.stage, "tokens_per_s": tokens / clock.seconds,
            "update_s": clock.seconds / args.steps, "timed_tokens": tokens, "warmup": args.warmup, "steps": args.steps,
            "first_loss": clock.first_loss, "attn_implementation": model.config._attn_implementation,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=SYSTEMS, required=True)
    p.add_argument("--stage", choices=list(STAGES), required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--config", default="launch/configs/llama-3.2-1b.yaml")
    p.add_argument("--model", default="random:llama-3.2-1b")
    p.add_argument("--warmup", type=int, default=3, help="untimed updates first (compilation happens there)")
    p.add_argument("--steps", type=int, default=10, help="timed updates")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = run(args)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
