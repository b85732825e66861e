"""Fine-tune one ToolGen stage with a hand-written Accelerate loop.

    accelerate launch toolgen/train.py --config launch/configs/smollm2-135m.yaml --stage memorization
    accelerate launch toolgen/train.py --config ... --stage retrieval    # starts from tool_memorization/
    accelerate launch toolgen/train.py --config ... --stage agent        # starts from retrieval_training/
    accelerate launch toolgen/train.py --config ... --stage add_tools --parent DIR/agent_tuning --data-dir ADDED
                                       # new tools into a finished stage: ADDED from toolgen-add-tools --prepare-only

Each stage continues the previous stage's LoRA adapter (and tool-token rows) rather than merging it into the base:
merging into a 4-bit QLoRA base would round the update away, and one adapter then carries all three stages.
Any config key can be overridden: `--set stages.agent.max_length=2048 --set lora.r=8`.
"""

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import shutil
import sys
import time

if __package__ in (None, ""):   # `accelerate launch toolgen/train.py` runs this file as a script
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from toolgen import quiet  # noqa: E402,F401  (first: it silences start-up notices before the libraries print them)

import torch  # noqa: E402
from accelerate.utils import set_seed  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from toolgen import checkpoint, lora_dropout, models, tokens  # noqa: E402
from toolgen.collate import num_tokens, stage_loader  # noqa: E402
from toolgen.config import ADD_TOOLS, ALL_STAGES, STAGES, ConfigError, flatten, load_config  # noqa: E402
from toolgen.config import data_dir as config_data_dir  # noqa: E402
from toolgen.distributed import (build_accelerator, device_map, launched_with_deepspeed, unpartitioned,  # noqa: E402
                                 uses_deepspeed)
from toolgen.distill import OldToolDistillation, TopLayers, old_tool_ids  # noqa: E402
from toolgen.parent_scores import FILE as PARENT_SCORES, ParentScoresLoss  # noqa: E402
from toolgen.head_loss import chunked_target_loss  # noqa: E402
from toolgen.step import NonFiniteLoss, build_optimizer, build_scheduler, update  # noqa: E402


class StageError(RuntimeError):
    pass


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=list(ALL_STAGES))
    p.add_argument("--config", help="YAML config (launch/configs/*.yaml)")
    p.add_argument("--output-dir", default="finetuned_toolgen_model")
    p.add_argument("--data-dir", help="stage files (default: config data.dir, else <output-dir>/data)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("--overwrite", action="store_true",
                   help="start over: delete this stage's checkpoints, replace its finished folder")
    p.add_argument("--from-scratch", action="store_true",
                   help="start from a fresh adapter instead of the previous stage's (ablations, e.g. no memorization)")
    p.add_argument("--parent", metavar="STAGE_DIR",
                   help="the finished stage folder to continue (default: the parent stage's folder under --output-dir)")
    p.add_argument("--folder", help="this stage's folder under --output-dir (default: the stage table's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if args.resume and args.overwrite:
        p.error("--resume and --overwrite exclude each other")
    if args.from_scratch and (args.parent or args.stage == ADD_TOOLS.name):
        p.error(f"--from-scratch starts without a parent: not with --parent or --stage {ADD_TOOLS.name}")
    return args


def check_start(args, run, paths):
    """Everything that can be wrong, checked before any work: parent stage, stage files, and what to do with an
    earlier run of this stage (finished folder, checkpoints) given --resume / --overwrite -> the checkpoint to resume."""
    stage, data_dir, out_dir, parent_dir, ckpt_root = paths
    if parent_dir and not os.path.exists(os.path.join(parent_dir, "stage.json")):
        fix = "give --parent a finished stage folder" if args.parent else f"run stage '{stage.parent}' first"
        raise StageError(f"stage '{stage.name}' starts from {parent_dir}, which is missing or incomplete "
                         f"(no stage.json): {fix}")
    prepare = ("toolgen-add-tools --prepare-only" if stage is ADD_TOOLS else "toolgen-prepare") + f" --out {data_dir}"
    for needed in ("tool_tokens.json", stage.file):
        if not os.path.exists(os.path.join(data_dir, needed)):
            raise StageError(f"{os.path.join(data_dir, needed)} is missing: prepare the data first "
                             f"({prepare}) or pass --data-dir")
    if stage is ADD_TOOLS:
        tokens.parent_token_count(parent_dir, data_dir)
        add = run["config"]["add_tools"]
        if add["train"] != "all" and launched_with_deepspeed():
            raise StageError(f"add_tools.train={add['train']} runs without DeepSpeed (its gradient hook is not ZeRO's)")
        if add["align_new_rows"] and launched_with_deepspeed():
            raise StageError("add_tools.align_new_rows runs without DeepSpeed (ZeRO-3 partitions the rows it scales)")
        if add["distill_weight"] and launched_with_deepspeed():
            raise StageError("add_tools.distill_weight runs without DeepSpeed (the teacher's weights are swapped in "
                             "place; ZeRO partitions them)")
    return checkpoint.earlier_run(out_dir, ckpt_root, stage.name, run, args.resume, args.overwrite)


def main(argv=None):
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    stage, sc = ALL_STAGES[args.stage], cfg.stages[args.stage]
    data_dir = args.data_dir or config_data_dir(cfg, args.output_dir)
    out_dir = os.path.join(args.output_dir, args.folder or stage.folder)
    parent_dir = args.parent or (os.path.join(args.output_dir, STAGES[stage.parent].folder)
                                 if stage.parent and not args.from_scratch else None)
    ckpt_root, data_file = out_dir + ".checkpoints", os.path.join(data_dir, stage.file)
    # What this run is: a resumed run must be the same one (checkpoint.MAY_CHANGE_ON_RESUME lists the exceptions).
    run = {"config": cfg.to_dict(), "from_scratch": args.from_scratch,
           **({"parent": parent_dir} if args.parent else {}), "processes": int(os.environ.get("WORLD_SIZE", "1")),
           "data_sha256": checkpoint.file_sha256(data_file) if os.path.exists(data_file) else None}
    resume_from = check_start(args, run, (stage, data_dir, out_dir, parent_dir, ckpt_root))

    accelerator, tokenizer, model, optimizer, loader, params, tool_tokens, loss_fn = build(args, cfg, sc, parent_dir,
                                                                                           data_dir, ckpt_root)
    ga = sc.gradient_accumulation_steps
    updates_per_epoch = len(loader) // ga   # a tail shorter than `ga` micro-batches is dropped, like drop_last
    if updates_per_epoch == 0:
        raise StageError(f"{data_file}: {len(loader.dataset)} examples give no full update of {ga} x "
                         f"{sc.per_device_batch_size} x {accelerator.num_processes}")
    total = sc.max_steps if sc.max_steps > 0 else math.ceil(sc.epochs * updates_per_epoch)
    scheduler = build_scheduler(optimizer, cfg.train, total)
    accelerator.register_for_checkpointing(scheduler)

    step, epoch, skip, history, rng = 0, 0, 0, [], None
    if resume_from:
        progress, rng = checkpoint.load_progress(accelerator, resume_from)
        step, epoch, skip, history = progress["step"], progress["epoch"], progress["batches_done"], progress["history"]
        accelerator.print(f"[{stage.name}] resumed from {resume_from} at step {step}")
    # purge_step: TensorBoard drops what an interrupted run logged after the checkpoint, so no step appears twice
    accelerator.init_trackers(f"{os.path.basename(os.path.abspath(args.output_dir))}/{os.path.basename(out_dir)}",
                              config={k: str(v) for k, v in flatten(cfg.to_dict()).items()},
                              init_kwargs={"tensorboard": {"purge_step": step + 1}} if step else {})
    bar = tqdm(total=total, initial=step, disable=not accelerator.is_local_main_process, desc=stage.name)
    # clock: when each update of this run ended (the update's one host sync has just returned) and its tokens, for
    # steady-state speed apart from start-up and compilation (benchmarks/throughput.py reads it from metrics.json)
    # The tokens stay on the device: reading them every micro-batch would make the step wait for the GPU.
    t0 = time.perf_counter()
    clock = {"update_end_s": [], "tokens": torch.zeros(max(total - step, 0), dtype=torch.long, device=accelerator.device)}
    model.train()
    with scheduled_gc(cfg.train.gc_every) as collect_garbage:
        while step < total:
            loader.set_epoch(epoch)   # the seedable sampler's order depends on (seed, epoch): a resume replays it
            batches = iter(accelerator.skip_first_batches(loader, skip) if skip else loader)
            batches_done, skip = skip, 0
            while step < total:
                group = [b for _, b in zip(range(ga), batches)]
                if len(group) < ga:
                    break
                if rng is not None:   # after the iterator's first fetch, which draws a seed from the torch RNG
                    checkpoint.set_torch_rng_state(rng)
                    rng = None
                batches_done += ga
                try:
                    loss, grad_norm = update(accelerator, model, optimizer, group, len(tokenizer), params,
                                             cfg.train.max_grad_norm, loss_fn)
                except NonFiniteLoss as e:
                    raise StageError(checkpoint.diverged(accelerator, stage.name, step + 1, e, ckpt_root)) from None
                tokens = sum(num_tokens(b) for b in group)
                clock["tokens"][len(clock["update_end_s"])] = tokens
                clock["update_end_s"].append(time.perf_counter() - t0)
                scheduler.step()
                step += 1
                collect_garbage(step)
                history.append(loss)
                bar.update(1)
                if step % cfg.train.logging_steps == 0 or step == total or step == 1:
                    seconds = max(time.perf_counter() - t0, 1e-9)
                    logs = {"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm or 0.0,
                            "tokens_per_s_per_device": clock["tokens"].sum().item() / seconds}
                    accelerator.log({f"{stage.name}/{k}": v for k, v in logs.items()}, step=step)
                    bar.set_postfix(loss=f"{loss:.4f}")
                if cfg.train.save_steps and (step % cfg.train.save_steps == 0 or step == total):
                    progress = {"step": step, "epoch": epoch, "history": history, "batches_done": batches_done,
                                "run": run}
                    checkpoint.save_checkpoint(accelerator, ckpt_root, progress)
            epoch += 1
    bar.close()
    finish(accelerator, model, tokenizer, tool_tokens, cfg, (stage, out_dir, parent_dir, data_file), run, history,
           time.perf_counter() - t0, clock, loss_fn)
    return accelerator.unwrap_model(model, keep_torch_compile=False), history


@contextlib.contextmanager
def scheduled_gc(every):
    """Python's cyclic garbage collector at fixed updates -> collect(step): it runs the young generations every
    `every` updates (0: Python's own schedule, collect does nothing). Its own schedule pauses a process at moments
    the update cannot choose, and under data parallelism every process waits for the one that paused."""
    if not every:
        yield lambda step: None
        return
    was_enabled = gc.isenabled()
    gc.disable()
    gc.collect(1)
    try:
        yield lambda step: gc.collect(1) if step % every == 0 else None
    finally:
        if was_enabled:
            gc.enable()


def build(args, cfg, sc, parent_dir, data_dir, ckpt_root):
    """The Accelerator, the model (base + tool tokens + a fresh or the parent's adapter), the data, the optimizer."""
    data_file = os.path.join(data_dir, ALL_STAGES[args.stage].file)
    accelerator = build_accelerator(cfg.train, sc.gradient_accumulation_steps, args.output_dir)
    if args.overwrite and accelerator.is_main_process:
        shutil.rmtree(ckpt_root, ignore_errors=True)
    accelerator.wait_for_everyone()
    set_seed(cfg.train.seed)

    # Model: base + tool tokens, then a fresh adapter (stage 1) or the parent stage's adapter, trainable.
    with open(os.path.join(data_dir, "tool_tokens.json"), encoding="utf-8") as f:
        tool_tokens = json.load(f)["tokens"]
    with unpartitioned(accelerator):
        # activations recomputed in the backward pass only where the stage asks for it (memory for long contexts)
        model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=cfg.model.gradient_checkpointing
                                        or sc.gradient_checkpointing)
        tokenizer, model, tool_ids = models.load_base(model_cfg, tool_tokens, device_map(accelerator, cfg.model))
        old = tokens.parent_token_count(parent_dir, data_dir) if args.stage == ADD_TOOLS.name else None
        model = models.stage_adapter(model, cfg.lora, tool_ids, parent_dir, old)
        if old is not None and cfg.add_tools.train != "all":
            try:
                models.train_new_rows_only(model, old, head_only=cfg.add_tools.train == "new_rows_head",
                                           keep_lora=cfg.add_tools.train == "new_rows_lora",
                                           lora_layers=cfg.add_tools.lora_layers)
            except ValueError as e:   # lora_layers beyond the model's layers, or a model without a layer list
                raise StageError(str(e)) from None
        if old is not None and cfg.add_tools.align_new_rows:
            try:
                models.tool_head(model)   # before any work: finish() scales its rows
            except ValueError as e:
                raise StageError(str(e)) from None
    if cfg.train.sparse_tool_rows:
        from toolgen.tool_rows import sparse_tool_rows
        sparse_tool_rows(model)
    if cfg.lora.recompute_dropout and cfg.train.compile:   # (the parent's adapter brings its own dropout rate)
        lora_dropout.recompute(model)

    loader, cut = stage_loader(tokenizer, data_file, sc, cfg.train, accelerator.main_process_first,
                               cfg.model.attn_implementation, accelerator.num_processes)
    if cut["target_tokens_cut"]:   # silent truncation once left half of the agent's targets untrained
        accelerator.print(f"[{args.stage}] warning: {cut['examples_cut']} of {cut['examples']} examples of {data_file} "
                          f"are longer than stages.{args.stage}.max_length={sc.max_length}: "
                          f"{cut['target_tokens_cut'] / max(cut['target_tokens'], 1):.1%} of the target tokens are "
                          "cut off and not trained (an example keeps its start); raise max_length (packing keeps it "
                          "cheap)" + ("" if sc.long_examples == "fit" else
                                      f", or set stages.{args.stage}.long_examples=fit"))
    if cut["examples_fitted"]:
        accelerator.print(f"[{args.stage}] {cut['examples_fitted']} long examples also train the answers max_length "
                          "cut off, on a history shortened as the agent loop shortens it "
                          f"(stages.{args.stage}.long_examples=fit)")
    fused = accelerator.device.type == "cuda" and not uses_deepspeed(accelerator)
    if fused:
        model.to(accelerator.device)   # fused AdamW needs its parameters on the GPU when it is built
    params = [p for p in model.parameters() if p.requires_grad]
    groups = models.lora_param_groups(model, sc.learning_rate, cfg.add_tools.lora_learning_rate) \
        if old is not None and cfg.add_tools.train == "new_rows_lora" else params
    optimizer = build_optimizer(groups, cfg.train, sc.learning_rate, fused)
    plugin = accelerator.state.deepspeed_plugin   # DeepSpeed's "auto" micro-batch is read from the loader, which
    if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):   # has none when it deals its
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = sc.per_device_batch_size   # batches (balance.py)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # add_tools with distillation: the parent's weights, as they are now, are the teacher of the old tools' order
    loss_fn = why = None
    if old is not None and cfg.add_tools.distill_weight > 0:
        k = cfg.add_tools.lora_layers   # only the last k layers move: the teacher reruns those alone
        top = TopLayers(accelerator.unwrap_model(model, keep_torch_compile=False), k) if k else None
        loss_fn = OldToolDistillation(params, tool_ids, old_tool_ids(data_dir, tool_tokens, tool_ids, old),
                                      cfg.add_tools.distill_weight, top, cfg.add_tools.distill_new_tools)
        why = "the distillation reads the logits" if cfg.train.chunked_loss else None
    elif old is not None and cfg.add_tools.parent_scores:   # the old tools scored by the parent's last layers
        unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
        kept = set(old_tool_ids(data_dir, tool_tokens, tool_ids, old))
        try:
            loss_fn = ParentScoresLoss(unwrapped, TopLayers(unwrapped, cfg.add_tools.lora_layers), tool_ids,
                                       [i for i in tool_ids if i not in kept], parent_dir)
        except ValueError as e:   # a parent whose parent_scores file does not fit these layers
            raise StageError(str(e)) from None
        why = "the spliced scores read the logits" if cfg.train.chunked_loss else None
    elif cfg.train.chunked_loss:
        zero3 = getattr(plugin, "zero_stage", 0) == 3
        loss_fn, why = chunked_target_loss(accelerator.unwrap_model(model, keep_torch_compile=False), zero3)
    if why:
        accelerator.print(f"[{args.stage}] train.chunked_loss: the plain loss runs ({why})")
    return accelerator, tokenizer, model, optimizer, loader, params, tool_tokens, loss_fn


def finish(accelerator, model, tokenizer, tool_tokens, cfg, where, run, history, seconds, clock, loss_fn=None):
    """The stage folder, with the loss history, the speed and what ran (stage.json)."""
    stage, out_dir, parent_dir, data_file = where
    step = len(history)
    # non-pad tokens of every update of this run (since it started or resumed), summed over the processes
    counts = accelerator.gather(clock["tokens"].reshape(1, -1)).sum(0).tolist()
    cuda = torch.cuda.is_available()
    speed = {"tokens_per_s": sum(counts) / max(seconds, 1e-9),
             "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
             "peak_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
             "clock": {"update_end_s": [round(t, 4) for t in clock["update_end_s"]], "tokens": counts}}
    metrics = {"loss_first": history[0], "loss_last": history[-1], "loss_history": history, "steps": step,
               "seconds": seconds, **speed}
    info = {"stage": stage.name, "base_model": cfg.model.name, "model": cfg.to_dict()["model"],
            "parent_stage": checkpoint.stage_of(parent_dir), "data_file": data_file,
            "data_sha256": run["data_sha256"], "steps": step, "seconds": round(seconds, 1),
            "processes": accelerator.num_processes}
    if stage is ADD_TOOLS:   # the parent, the tools added and the hashes of what made the data (toolgen/add_tools.py)
        with open(os.path.join(os.path.dirname(data_file), "add_tools_report.json"), encoding="utf-8") as f:
            added = json.load(f)
        info.update({k: added[k] for k in ("parent", "chain_stage", "tools_added", "tools_replaced", "data_hashes")})
        if cfg.add_tools.align_new_rows:   # every process scales its own copy alike; process 0 saves it
            n_old = tokens.parent_token_count(parent_dir, os.path.dirname(data_file))
            info["new_rows_scale"] = models.align_new_rows(accelerator.unwrap_model(model, keep_torch_compile=False),
                                                           n_old)
            accelerator.print(f"[{stage.name}] new tool rows scaled by {info['new_rows_scale']:.4f} to the old rows' "
                              "mean norm (add_tools.align_new_rows)")
    tensors = {}
    if isinstance(loss_fn, ParentScoresLoss):   # what inference needs to score the old tools as the parent did
        tensors[PARENT_SCORES] = loss_fn.state()
        info["parent_scores"] = {"file": PARENT_SCORES, "layers": cfg.add_tools.lora_layers,
                                 "levels": len(loss_fn.levels), "own_columns": len(loss_fn.own_ids)}
    checkpoint.save_stage(accelerator, model, tokenizer, out_dir, tool_tokens, cfg.to_dict(), metrics, info, tensors)
    accelerator.print(f"[{stage.name}] {step} steps in {seconds:.0f}s ({speed['tokens_per_s']:.0f} tokens/s): "
                      f"loss {history[0]:.4f} -> {history[-1]:.4f}; saved {out_dir}")
    accelerator.end_training()   # last: it also ends the process group


def cli():
    try:
        main()
    except (StageError, ConfigError, checkpoint.CheckpointError, tokens.TokenOrderError) as e:
        sys.exit(f"toolgen-train: error: {e}")


if __name__ == "__main__":
    cli()
