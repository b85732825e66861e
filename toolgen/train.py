"""Fine-tune one ToolGen stage with a hand-written Accelerate loop.

    accelerate launch toolgen/train.py --config launch/configs/smollm2-135m.yaml --stage memorization
    accelerate launch toolgen/train.py --config ... --stage retrieval    # starts from tool_memorization/
    accelerate launch toolgen/train.py --config ... --stage agent        # starts from retrieval_training/

Each stage continues the previous stage's LoRA adapter (and tool-token rows) rather than merging it into the base:
merging into a 4-bit QLoRA base would round the update away, and one adapter then carries all three stages.
Any config key can be overridden: `--set stages.agent.max_length=2048 --set lora.r=8`.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import time

if __package__ in (None, ""):   # `accelerate launch toolgen/train.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
from accelerate import Accelerator, DataLoaderConfiguration, InitProcessGroupKwargs
from accelerate.utils import GradientAccumulationPlugin, TorchDynamoPlugin, set_seed
from datasets import load_dataset
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from toolgen import models
from toolgen.collate import IGNORE, LeftPadCollator, LengthGroupedSampler, PackedCollator, num_tokens, tokenize_messages
from toolgen.config import STAGES, load_config
from toolgen.config import data_dir as config_data_dir


class StageError(RuntimeError):
    pass


def target_loss(model, batch, vocab_size):
    """Summed cross-entropy over the target tokens, with the LM head run only at positions where some row has a target.

    Labels are shifted as usual (position t predicts token t+1). `logits_to_keep` takes the positions, so the
    [tokens x vocab] logits tensor of the whole batch is never built; with left padding the short stage-1/2 examples
    share their target positions. Logits are cut to the real vocabulary: the padding rows are never predicted.
    """
    labels = batch["labels"][:, 1:]
    positions = (labels != IGNORE).any(0).nonzero().squeeze(-1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch["position_ids"], logits_to_keep=positions, use_cache=False)
    logits = out.logits[..., :vocab_size].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), labels[:, positions].reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")


def stage_paths(output_dir, stage):
    file_name, folder, parent = STAGES[stage]
    return file_name, os.path.join(output_dir, folder), parent and os.path.join(output_dir, STAGES[parent][1])


def check_parent(parent_dir, stage):
    if parent_dir and not os.path.exists(os.path.join(parent_dir, "stage.json")):
        raise StageError(f"stage '{stage}' starts from {parent_dir}, which is missing or incomplete "
                         f"(no stage.json): run stage '{STAGES[stage][2]}' first")


def torch_rng_state():
    return {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def set_torch_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def latest_checkpoint(ckpt_root):
    done = [d for d in os.listdir(ckpt_root) if d.startswith("step-")] if os.path.isdir(ckpt_root) else []
    return os.path.join(ckpt_root, max(done, key=lambda d: int(d.split("-")[1]))) if done else None


def save_checkpoint(accelerator, ckpt_root, step, epoch, batches_done, history):
    """save_state into a temporary folder, renamed when complete: an interrupted save never replaces a good one."""
    tmp, final = os.path.join(ckpt_root, f"tmp-step-{step}"), os.path.join(ckpt_root, f"step-{step}")
    accelerator.save_state(tmp)
    # Our own copy of this process's torch RNG, restored once the resumed run's data iterator has started (which
    # draws a seed from it): accelerate's copy is restored before that draw, so dropout would shift by one number.
    torch.save(torch_rng_state(), os.path.join(tmp, f"torch_rng_{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "progress.json"), "w") as f:
            json.dump({"step": step, "epoch": epoch, "batches_done": batches_done, "history": history}, f)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(STAGES))
    p.add_argument("--config", help="YAML config (launch/configs/*.yaml)")
    p.add_argument("--output-dir", default="finetuned_toolgen_model")
    p.add_argument("--data-dir", help="stage files (default: config data.dir, else <output-dir>/data)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--from-scratch", action="store_true",
                   help="start from a fresh adapter instead of the previous stage's (ablations, e.g. no memorization)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    sc = cfg.stages[args.stage]
    data_dir = args.data_dir or config_data_dir(cfg, args.output_dir)
    file_name, out_dir, parent_dir = stage_paths(args.output_dir, args.stage)
    parent_dir = None if args.from_scratch else parent_dir
    check_parent(parent_dir, args.stage)
    for needed in ("tool_tokens.json", file_name):
        if not os.path.exists(os.path.join(data_dir, needed)):
            raise StageError(f"{os.path.join(data_dir, needed)} is missing: prepare the data first "
                             f"(toolgen-prepare --out {data_dir}) or pass --data-dir")

    # No CUDA: gloo, or several CPU processes would not form a process group and the data would not be sharded.
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu_only = not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(backend="gloo")] if distributed and cpu_only else []
    accelerator = Accelerator(
        # without cpu=True, CPU processes of a plain data-parallel launch each think they are alone (no gather)
        cpu=cpu_only and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        # sync_with_dataloader=False: we hand accumulate() exactly `steps` micro-batches per update (see below).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=sc.gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        # compile: each decoder layer once (one graph reused 16x), shapes dynamic since every batch has its own length
        dynamo_plugin=TorchDynamoPlugin(backend="inductor", use_regional_compilation=True, dynamic=True)
        if cfg.train.compile else None,
        log_with="tensorboard", project_dir=os.path.join(args.output_dir, "runs"), kwargs_handlers=handlers)
    set_seed(cfg.train.seed)

    # Model: base + tool tokens, then a fresh adapter (stage 1) or the parent stage's adapter, trainable.
    with open(os.path.join(data_dir, "tool_tokens.json"), encoding="utf-8") as f:
        tool_tokens = json.load(f)["tokens"]
    device_map = {"": accelerator.device} if cfg.model.quantization == "4bit" else None
    with models.unpartitioned(accelerator):
        # activations recomputed in the backward pass only where the stage asks for it (memory for long contexts)
        model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=cfg.model.gradient_checkpointing
                                        or sc.gradient_checkpointing)
        tokenizer, model, tool_ids = models.load_base(model_cfg, tool_tokens, device_map)
        if parent_dir:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, os.path.join(parent_dir, "adapter"), is_trainable=True)
        else:
            model = models.lora_model(model, cfg.lora, tool_ids)
    if cfg.train.sparse_tool_rows:
        from toolgen.tool_rows import sparse_tool_rows
        sparse_tool_rows(model)
    vocab_size = len(tokenizer)

    # Data: the stage file, tokenized with loss masks (cached by datasets), left-padded (or packed) batches.
    data_file = os.path.join(data_dir, file_name)
    dataset = load_dataset("json", data_files=data_file, split="train")
    with accelerator.main_process_first():
        dataset = dataset.map(lambda ex: tokenize_messages(tokenizer, ex["messages"], sc.max_length),
                              remove_columns=dataset.column_names, desc=f"tokenizing {file_name}")
    sampler = LengthGroupedSampler([len(ids) for ids in dataset["input_ids"]], 64 * sc.per_device_batch_size,
                                   cfg.train.seed) if cfg.train.group_by_length else None
    loader = DataLoader(dataset, batch_size=sc.per_device_batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=cfg.train.num_workers,
                        collate_fn=(PackedCollator(tokenizer.pad_token_id, cfg.train.pack_to_multiple_of)
                                    if cfg.train.packing else LeftPadCollator(tokenizer.pad_token_id)))

    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=sc.learning_rate, weight_decay=cfg.train.weight_decay)
    elif cfg.train.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=sc.learning_rate, weight_decay=cfg.train.weight_decay)
    else:
        raise StageError(f"train.optimizer: {cfg.train.optimizer!r} (use adamw or sgd)")
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    ga = sc.gradient_accumulation_steps
    updates_per_epoch = len(loader) // ga   # a tail shorter than `ga` micro-batches is dropped, like drop_last
    if updates_per_epoch == 0:
        raise StageError(f"{data_file}: {len(dataset)} examples give no full update of {ga} x "
                         f"{sc.per_device_batch_size} x {accelerator.num_processes}")
    total = sc.max_steps if sc.max_steps > 0 else math.ceil(sc.epochs * updates_per_epoch)
    # Stepped once per update by us (not prepared: accelerate would step it once per process).
    warmup = int(cfg.train.warmup_ratio * total)
    scheduler = (get_cosine_schedule_with_warmup(optimizer, warmup, total) if cfg.train.lr_scheduler == "cosine"
                 else get_constant_schedule_with_warmup(optimizer, warmup))
    accelerator.register_for_checkpointing(scheduler)

    step, start_epoch, skip, history, rng = 0, 0, 0, [], None
    ckpt_root = out_dir + ".checkpoints"
    if args.resume and (ckpt := latest_checkpoint(ckpt_root)):
        accelerator.load_state(ckpt)
        with open(os.path.join(ckpt, "progress.json")) as f:
            progress = json.load(f)
        step, start_epoch, skip = progress["step"], progress["epoch"], progress["batches_done"]
        history = progress["history"]
        rng = torch.load(os.path.join(ckpt, f"torch_rng_{accelerator.process_index}.pt"), weights_only=True)
        accelerator.print(f"resumed from {ckpt} at step {step}")

    run_name = f"{os.path.basename(os.path.abspath(args.output_dir))}/{STAGES[args.stage][1]}"
    accelerator.init_trackers(run_name, config={k: str(v) for k, v in _flat(cfg.to_dict()).items()})
    bar = tqdm(total=total, initial=step, disable=not accelerator.is_local_main_process, desc=args.stage)
    # tokens_seen stays on the device: reading it every micro-batch would make the step wait for the GPU
    t0, tokens_seen, grad_norm = time.time(), torch.zeros((), dtype=torch.long, device=accelerator.device), None
    model.train()
    epoch = start_epoch
    while step < total:
        loader.set_epoch(epoch)   # the seedable sampler's order depends on (seed, epoch): a resume replays it
        batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
        batches_done = skip
        skip = 0
        while step < total:
            group = [b for _, b in zip(range(ga), batches)]
            if len(group) < ga:
                break
            if rng is not None:   # after the iterator's first fetch, which draws a seed from the torch RNG
                set_torch_rng_state(rng)
                rng = None
            batches_done += ga
            # Normalise by the target tokens of the whole update, on all processes: the result does not depend on
            # how the update is split into micro-batches or processes (accelerate's autoregressive GA example).
            n_targets = accelerator.gather(sum((b["labels"][:, 1:] != IGNORE).sum() for b in group)).sum()
            step_loss = torch.zeros((), device=accelerator.device)
            for batch in group:
                with accelerator.accumulate(model):
                    loss_sum = target_loss(model, batch, vocab_size)
                    step_loss += loss_sum.detach()
                    # backward() divides by ga and DDP averages over processes: undo both, the normaliser has them.
                    accelerator.backward(loss_sum / n_targets * ga * accelerator.num_processes)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(params, cfg.train.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                tokens_seen += num_tokens(batch)
            scheduler.step()
            step += 1
            loss = (accelerator.gather(step_loss).sum() / n_targets).item()
            if not math.isfinite(loss):
                raise StageError(f"stage {args.stage}: loss is {loss} at step {step}; stopping "
                                 f"(last good checkpoint: {latest_checkpoint(ckpt_root)})")
            history.append(loss)
            bar.update(1)
            if step % cfg.train.logging_steps == 0 or step == total or step == 1:
                elapsed = time.time() - t0
                logs = {"loss": loss, "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
                        "tokens_per_s_per_device": tokens_seen.item() / max(elapsed, 1e-9)}
                accelerator.log({f"{args.stage}/{k}": v for k, v in logs.items()}, step=step)
                bar.set_postfix(loss=f"{loss:.4f}")
            if cfg.train.save_steps and (step % cfg.train.save_steps == 0 or step == total):
                save_checkpoint(accelerator, ckpt_root, step, epoch, batches_done, history)
        epoch += 1
    bar.close()
    seconds = time.time() - t0
    speed = {"tokens_per_s": accelerator.gather(tokens_seen.reshape(1)).sum().item()
             / max(seconds, 1e-9),   # all processes, non-pad tokens (since this run started or resumed)
             "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None}
    save_stage(accelerator, model, tokenizer, tool_tokens, cfg, args, out_dir, data_file, step, history, seconds, speed)
    accelerator.end_training()   # last: it also ends the process group
    return accelerator.unwrap_model(model, keep_torch_compile=False), history


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def save_stage(accelerator, model, tokenizer, tool_tokens, cfg, args, out_dir, data_file, steps, history, seconds, speed):
    """Adapter + tokenizer + config + metrics + stage.json, written to <out_dir>.tmp and renamed: stage.json last."""
    state = accelerator.get_state_dict(model)   # every rank calls it: under ZeRO-3 it gathers the shards
    if accelerator.is_main_process:
        state = {k.replace("._orig_mod", ""): v for k, v in state.items()}   # names as without train.compile
        tmp = out_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(os.path.join(tmp, "adapter"), state_dict=state,
                                                        save_embedding_layers=False)
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        with open(os.path.join(tmp, "tool_tokens.json"), "w") as f:
            json.dump(tool_tokens, f)
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=1)
        with open(data_file, "rb") as f:
            data_hash = hashlib.sha256(f.read()).hexdigest()
        metrics = {"loss_first": history[0], "loss_last": history[-1], "loss_history": history, "steps": steps,
                   "seconds": seconds, **speed}
        with open(os.path.join(tmp, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
        info = {"stage": args.stage, "base_model": cfg.model.name, "model": cfg.to_dict()["model"],
                "parent_stage": None if args.from_scratch else STAGES[args.stage][2], "data_file": data_file, "data_sha256": data_hash,
                "steps": steps, "seconds": round(seconds, 1), "processes": accelerator.num_processes}
        with open(os.path.join(tmp, "stage.json"), "w") as f:
            json.dump(info, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
        print(f"[{args.stage}] {steps} steps in {seconds:.0f}s ({speed['tokens_per_s']:.0f} tokens/s): "
              f"loss {history[0]:.4f} -> {history[-1]:.4f}; saved {out_dir}", flush=True)
    accelerator.wait_for_everyone()


def cli():
    try:
        main()
    except StageError as e:
        sys.exit(f"toolgen-train: error: {e}")


if __name__ == "__main__":
    cli()
