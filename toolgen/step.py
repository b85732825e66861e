"""How the weights change: the optimizer, the learning-rate schedule, and one update over a group of micro-batches.

`update` is the one function the training loop calls per optimizer step, so a benchmark that times it times the loop's
own step (benchmarks/throughput.py still times its own copy of the step; moving it here is issue 16's).
"""

import math

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from toolgen.distributed import uses_deepspeed
from toolgen.loss import count_targets, target_loss


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm of an update is NaN/inf; raised before the update reaches the weights."""


def build_optimizer(params, train_cfg, learning_rate, fused=False):
    """AdamW or plain SGD. fused: AdamW's one-kernel update for all tensors (CUDA parameters only) instead of several
    kernels per tensor, which counts on the short, launch-bound steps of stages 1 and 2."""
    if train_cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, weight_decay=train_cfg.weight_decay)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=train_cfg.weight_decay, fused=fused or None)


def build_scheduler(optimizer, train_cfg, total_steps):
    """Stepped once per update by the loop (not prepared: accelerate would step it once per process)."""
    warmup = int(train_cfg.warmup_ratio * total_steps)
    if train_cfg.lr_scheduler == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)
    return get_constant_schedule_with_warmup(optimizer, warmup)


def update(accelerator, model, optimizer, group, vocab_size, params, max_grad_norm, loss_fn=None):
    """One optimizer update over the micro-batches in `group` -> (loss per target token, grad norm or None).
    loss_fn(model, batch, vocab_size): the summed loss of a micro-batch (None: target_loss; an add_tools stage with
    distillation adds its KL term: toolgen/distill.py).

    The loss is normalised by the target tokens of the whole update on all processes, so it does not depend on how
    the update is split (accelerate's autoregressive gradient-accumulation recipe). The finiteness check runs before
    the weights change: a NaN/inf raises NonFiniteLoss and the last checkpoint stays the last good state. Under
    DeepSpeed the update happens inside the last backward, so there the loss is checked just before that backward.
    """
    deepspeed = uses_deepspeed(accelerator)
    n_targets = accelerator.gather(sum(count_targets(b) for b in group)).sum()
    # backward() divides by the accumulation steps and DDP averages over processes: undo both, n_targets has them.
    scale = len(group) * accelerator.num_processes
    step_loss = torch.zeros((), device=accelerator.device)
    loss = grad_norm = None
    for i, batch in enumerate(group):
        with accelerator.accumulate(model):
            loss_sum = (loss_fn or target_loss)(model, batch, vocab_size)
            step_loss += loss_sum.detach()
            if deepspeed and i == len(group) - 1:
                loss, _ = _checked(accelerator.gather(step_loss).sum() / n_targets)
            accelerator.backward(loss_sum / n_targets * scale)
    if accelerator.sync_gradients:
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    if loss is None:   # one host sync per update: loss and gradient norm together
        loss, grad_norm = _checked(accelerator.gather(step_loss).sum() / n_targets, grad_norm)
    elif grad_norm is not None:
        grad_norm = float(grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, grad_norm


def _checked(loss, grad_norm=None):
    """(loss, gradient norm or None) as floats: the update's one host sync reads both in the same transfer."""
    values = [loss] + ([grad_norm] if grad_norm is not None else [])
    loss_value, *norm = torch.stack([torch.as_tensor(v, device=loss.device).float().reshape(()) for v in values]).tolist()
    if not math.isfinite(loss_value):
        raise NonFiniteLoss(f"loss is {loss_value}")
    if norm and not math.isfinite(norm[0]):
        raise NonFiniteLoss(f"gradient norm is {norm[0]}")
    return loss_value, (norm[0] if norm else None)
