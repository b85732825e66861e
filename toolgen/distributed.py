"""Where a stage runs: the Accelerator (one process, DDP, DeepSpeed ZeRO; gloo on CPU), the model built whole under
ZeRO-3, the device map of a 4-bit model. FSDP2 would be set up here."""

import contextlib
import os

import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs, InitProcessGroupKwargs
from accelerate.utils import GradientAccumulationPlugin, TorchDynamoPlugin


def launched_with_deepspeed():
    """Whether `accelerate launch` set this process up for DeepSpeed (readable before the Accelerator exists)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") == "true"


def build_accelerator(train_cfg, gradient_accumulation_steps, output_dir):
    cpu_only = not torch.cuda.is_available()
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    deepspeed = launched_with_deepspeed()
    # No CUDA: gloo, or several CPU processes would not form a process group and the data would not be sharded.
    handlers = [InitProcessGroupKwargs(backend="gloo")] if distributed and cpu_only else []
    # DDP broadcasts the model's buffers from process 0 before every forward pass, which makes every micro-batch
    # wait for the slowest process, not only the update's all-reduce. Our models' buffers (rotary frequencies) never
    # change in training, so there is nothing to broadcast.
    if distributed and not deepspeed:
        handlers.append(DistributedDataParallelKwargs(broadcast_buffers=False))
    return Accelerator(
        # without cpu=True, CPU processes of a plain data-parallel launch each think they are alone (no gather)
        cpu=cpu_only and not deepspeed,
        # sync_with_dataloader=False: the loop hands accumulate() exactly `steps` micro-batches per update.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        # non_blocking: batches the loader's workers pinned are copied to the GPU while the host goes on
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True,
                                                  non_blocking=train_cfg.num_workers > 0 and not cpu_only),
        dynamo_plugin=dynamo_plugin(train_cfg),
        log_with="tensorboard", project_dir=os.path.join(output_dir, "runs"), kwargs_handlers=handlers)


def dynamo_plugin(train_cfg):
    """train.compile: each decoder layer once (one graph reused for every layer; compile_regional false: the whole
    model as one graph), shapes dynamic since every batch has its own length; None without compilation."""
    if not train_cfg.compile:
        return None
    return TorchDynamoPlugin(backend="inductor", mode=train_cfg.compile_mode, dynamic=True,
                             use_regional_compilation=train_cfg.compile_regional)


def device_map(accelerator, model_cfg):
    """A 4-bit model is quantized on the device it trains on (bitsandbytes cannot move it afterwards)."""
    return {"": accelerator.device} if model_cfg.quantization == "4bit" else None


def uses_deepspeed(accelerator):
    return accelerator.state.deepspeed_plugin is not None


@contextlib.contextmanager
def unpartitioned(accelerator):
    """Build the model from ordinary tensors, also under DeepSpeed ZeRO-3.

    Under ZeRO-3 accelerate registers its config with transformers, which then loads every model inside
    `deepspeed.zero.Init` (weights partitioned at load). Writing the tool-token rows and peft's trainable-token set-up
    would then need gathered weights, and peft 0.21 gathers them on CUDA only (it fails on CPU). For LoRA the full
    base fits on each rank, so we build it whole and let `accelerator.prepare` partition it: the same sharded training,
    only without the load-time memory saving. The registration is restored afterwards (saving needs it).
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None or plugin.zero_stage != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config
    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()
