"""Folders that are complete or absent: stage folders, checkpoints, prepared data, cached models, reports.

`atomic_folder` is the one way anything here writes a folder: write into `<final>.tmp-*`, then swap it in. Checkpoint
save / find / resume (with our own copy of the torch RNG) live here too, so `train.py` keeps only the loop.
"""

import contextlib
import json
import os
import shutil
import uuid


@contextlib.contextmanager
def atomic_folder(final):
    """Yield a fresh temporary folder beside `final`; when the block ends without an error it replaces `final` whole.

    An old `final` is first moved aside and removed after the swap, so a reader never sees old and new files mixed
    (a plain os.replace cannot replace a non-empty folder). On an error, in the block or in the swap itself, the
    temporary folder is removed and `final` is left as it was.
    """
    final = os.path.normpath(final)
    # names of this writer's own: two processes that build the same cache folder at once (two benchmark jobs
    # starting side by side) must not remove each other's half-written folder; the last to finish wins
    suffix = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = f"{final}.tmp-{suffix}", f"{final}.old-{suffix}"
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if os.path.exists(final):
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except BaseException:   # the old folder was moved aside already: put it back before giving up
            if os.path.exists(old) and not os.path.exists(final):
                os.replace(old, final)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def stage_of(stage_dir):
    """The stage name a finished stage folder records (None for no folder)."""
    if not stage_dir:
        return None
    with open(os.path.join(stage_dir, "stage.json"), encoding="utf-8") as f:
        return json.load(f)["stage"]


def read_json(path, error=ValueError, missing=": not found"):
    """A JSON file, or `error` naming the file: missing (path + `missing`) or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{path}{missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def write_json(path, obj, indent=1):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)


def file_sha256(path):
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- checkpoints: <stage folder>.checkpoints/step-N -------------------------------------------------------------------

# Config keys a resumed run may change: they do not change what is computed (how often it logs or saves, data-loader
# workers, compilation). Anything else (steps, batch, learning rate, data, model...) would make the finished stage's
# config.json describe a run that did not happen.
MAY_CHANGE_ON_RESUME = {"train.logging_steps", "train.save_steps", "train.num_workers", "train.gc_every",
                        "train.compile", "train.compile_mode", "train.compile_regional", "train.chunked_loss",
                        "train.balance_processes"}


class CheckpointError(ValueError):
    """An earlier run of the stage and the flags given do not fit together; the message says what to pass."""


def earlier_run(out_dir, ckpt_root, stage, run, resume, overwrite):
    """What to do with an earlier run of this stage -> the checkpoint to resume from, or None (start afresh).
    Every case is explicit: a finished stage is never replaced, nor checkpoints ignored, without --overwrite; --resume
    needs a checkpoint and the same run (MAY_CHANGE_ON_RESUME lists what may differ)."""
    latest = latest_checkpoint(ckpt_root)
    if os.path.exists(os.path.join(out_dir, "stage.json")) and not overwrite:
        raise CheckpointError(f"{out_dir} holds a finished '{stage}' stage: pass --overwrite to train it again")
    if resume and not latest:
        raise CheckpointError(f"--resume: no complete checkpoint in {ckpt_root} (train.save_steps writes them); "
                              f"run without --resume to start")
    if latest and not (resume or overwrite):
        raise CheckpointError(f"{ckpt_root} holds checkpoints of an earlier run: --resume continues it, "
                              f"--overwrite deletes them and starts over")
    if not resume:
        return None
    with open(os.path.join(latest, "progress.json"), encoding="utf-8") as f:
        mismatches = resume_mismatches(json.load(f)["run"], run)
    if mismatches:
        raise CheckpointError(f"--resume from {latest}: the run differs from the checkpoint's "
                              f"({'; '.join(mismatches)}); resume with the same settings, or --overwrite")
    return latest


def torch_rng_state():
    import torch
    return {"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state()} if torch.cuda.is_available() else {})}


def set_torch_rng_state(state):
    import torch
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


def checkpoints(ckpt_root):
    """Complete checkpoints, oldest first, as (step, path). Unfinished saves (tmp-step-N) and diverged ones are not."""
    if not os.path.isdir(ckpt_root):
        return []
    found = [(int(d.split("-")[1]), os.path.join(ckpt_root, d)) for d in os.listdir(ckpt_root)
             if d.startswith("step-") and d.split("-")[1].isdigit()]
    return sorted(found)


def latest_checkpoint(ckpt_root):
    found = checkpoints(ckpt_root)
    return found[-1][1] if found else None


def save_checkpoint(accelerator, ckpt_root, progress):
    """accelerate's save_state into tmp-step-N, renamed step-N when complete: an interrupted save never replaces a
    good one. progress: step, epoch, batches_done, history, and what the run is (config, data hash, processes)."""
    import torch
    step = progress["step"]
    tmp, final = os.path.join(ckpt_root, f"tmp-step-{step}"), os.path.join(ckpt_root, f"step-{step}")
    accelerator.save_state(tmp)
    # Our own copy of this process's torch RNG, restored once the resumed run's data iterator has started (which
    # draws a seed from it): accelerate's copy is restored before that draw, so dropout would shift by one number.
    torch.save(torch_rng_state(), os.path.join(tmp, f"torch_rng_{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        write_json(os.path.join(tmp, "progress.json"), progress, indent=None)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()


def resume_mismatches(saved, now):
    """['key: saved -> now'] for every setting of the run that differs from the checkpoint's, except those that may."""
    from toolgen.config import Config, flatten
    a, b = flatten(saved), flatten(now)
    # a setting newer than the checkpoint, left at its default, changes nothing the checkpoint's run did
    defaults = flatten({"config": Config().to_dict()})
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if k.removeprefix("config.") not in MAY_CHANGE_ON_RESUME and a.get(k) != b.get(k)
            and not (k not in a and k in defaults and b[k] == defaults[k])]


def load_progress(accelerator, ckpt):
    """Restore a checkpoint -> (progress dict, this process's torch RNG state to set once the data iterator started)."""
    import torch
    accelerator.load_state(ckpt)
    with open(os.path.join(ckpt, "progress.json"), encoding="utf-8") as f:
        progress = json.load(f)
    rng = torch.load(os.path.join(ckpt, f"torch_rng_{accelerator.process_index}.pt"), weights_only=True)
    return progress, rng


def set_aside_diverged(ckpt_root, failed_step):
    """The loss of step N is computed with the weights saved at step N-1: when it is NaN/inf, that checkpoint holds
    diverged weights. Rename it (diverged-step-N) so that --resume takes the one before; returns that one or None."""
    for step, path in checkpoints(ckpt_root):
        if step >= failed_step - 1:
            os.replace(path, os.path.join(ckpt_root, f"diverged-step-{step}"))
    return latest_checkpoint(ckpt_root)


def diverged(accelerator, stage, step, error, ckpt_root):
    """The message of a NaN/inf stop; the checkpoint that holds the weights which produced it is set aside."""
    good = set_aside_diverged(ckpt_root, step) if accelerator.is_main_process else None
    where = f"--resume continues from {good}" if good else "no checkpoint before it"
    return (f"stage {stage}: {error} at step {step}, with the weights after step {step - 1}; stopped before the update "
            f"(last good checkpoint: {where})")


# ---- the finished stage folder ----------------------------------------------------------------------------------------

def _uncompiled_name(key):
    parts = [p for p in key.split(".") if p != "_orig_mod"]
    return ".".join(parts[1:] if parts[0] == "module" else parts)


def save_stage(accelerator, model, tokenizer, out_dir, tool_tokens, config, metrics, info, tensors=None):
    """adapter/ + tokenizer/ + tool_tokens.json + config.json + metrics.json + stage.json, as one atomic folder
    (stage.json, which later stages check for, is written last). Every process calls it: under ZeRO-3 the state dict
    is gathered from the shards. tensors: {file name: {key: tensor}} saved beside them (safetensors)."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        # names as one uncompiled process has them: under data parallel accelerate compiles the regions of the DDP
        # wrapper and get_state_dict then returns the wrapper's names (`module.` first, `_orig_mod` in each layer;
        # compile_regional false: `_orig_mod.` before all)
        state = {_uncompiled_name(k): v for k, v in state.items()}
        with atomic_folder(out_dir) as tmp:
            accelerator.unwrap_model(model, keep_torch_compile=False).save_pretrained(
                os.path.join(tmp, "adapter"), state_dict=state, save_embedding_layers=False)
            tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
            write_json(os.path.join(tmp, "tool_tokens.json"), tool_tokens, indent=None)
            write_json(os.path.join(tmp, "config.json"), config)
            write_json(os.path.join(tmp, "metrics.json"), metrics)
            for name, state in (tensors or {}).items():
                from safetensors.torch import save_file   # here: the module's other readers need no torch
                save_file(state, os.path.join(tmp, name))
            write_json(os.path.join(tmp, "stage.json"), info)
    accelerator.wait_for_everyone()
