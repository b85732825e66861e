"""LoRA dropout whose mask is drawn again in the backward pass instead of being kept (lora.recompute_dropout).

peft computes `lora_B(lora_A(dropout(x)))` for each adapted module, after casting x to the adapter's dtype. For the
backward pass autograd then keeps, for every module, the dropout mask and the dropped input (A's weight gradient
needs it): q, k and v read the same x but keep three masks and three copies, and the frozen base layer itself keeps
nothing (on Llama-3.2-1B in bf16 ~60 KB per token and layer by count). Here A's product
and the dropout are one autograd function that keeps only x (the layer input, one tensor for q, k and v) and a seed:
the mask is a hash of (seed, element index), computed again in the backward pass. Same dropout (keep with probability
1 - p, scale 1 / (1 - p)), another random stream than torch's, seeded from torch's generator (so a run and its resume
draw the same masks). Training only: a saved adapter is peft's own.
Only for compiled layers (train.compile): there the hash is one fused kernel with the product's input; run eagerly it
is some 30 elementwise passes over int64 copies of x per module, slower than peft's dropout (2x on the tiny CPU model).
Off by default: on the agent shape (4 x H200) the step's peak memory and speed did not move with it.
"""

import torch
import torch.nn.functional as F

M32 = 0xFFFFFFFF


def _mul32(h, c):
    """(h * c) mod 2**32 for int64 h in [0, 2**32) and a 32-bit constant c, without overflowing int64."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & M32


def _fmix32(h):
    """MurmurHash3's finalizer: a bijection of 32-bit values in which every input bit moves every output bit."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def keep_mask(seed, like, p):
    """Bool mask of like's shape, True with probability 1 - p: hash(hash(element index) xor seed) >= p * 2**32."""
    index = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    return _fmix32(_fmix32(index & M32) ^ seed) >= round(p * 2**32)


class DroppedLinear(torch.autograd.Function):
    """x -> dropout(x) @ weight.T in `dtype` (autocast's, else the weight's), keeping x, the weight and the seed."""

    @staticmethod
    def forward(ctx, x, weight, seed, p, dtype):
        ctx.save_for_backward(x, weight, seed)
        ctx.p, ctx.dtype = p, dtype
        return F.linear(x.to(dtype) * _scale(seed, x, p, dtype), weight.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        x, weight, seed = ctx.saved_tensors
        scale = _scale(seed, x, ctx.p, ctx.dtype)   # the forward's, drawn again
        grad = grad.to(ctx.dtype)
        grad_weight = grad.reshape(-1, grad.shape[-1]).T @ (x.to(ctx.dtype) * scale).reshape(-1, x.shape[-1])
        grad_x = (grad @ weight.to(ctx.dtype)) * scale
        return grad_x.to(x.dtype), grad_weight.to(weight.dtype), None, None, None


def _scale(seed, x, p, dtype):
    """What dropout multiplies x by: 0 where dropped, 1 / (1 - p) where kept."""
    return keep_mask(seed, x, p).to(dtype) / (1 - p)


class RecomputedDropoutA(torch.nn.Module):
    """Stands in for a LoRA A layer (no bias) and its dropout: the same weight Parameter, so the adapter's tensor
    names do not change; in eval mode a plain product (no dropout)."""

    def __init__(self, linear, p):
        super().__init__()
        self.weight, self.p = linear.weight, p

    def forward(self, x):
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else self.weight.dtype
        if not self.training:
            return F.linear(x.to(dtype), self.weight.to(dtype))
        seed = torch.randint(0, 2**31, (), device=x.device)
        return DroppedLinear.apply(x, self.weight, seed, self.p, dtype)


def recompute(model):
    """Every LoRA layer with dropout p > 0: its dropout folded into RecomputedDropoutA; where all of a layer's adapters
    are, peft's cast of x to the adapter's dtype is turned off (the product casts; the cast would be one more copy of
    x per module) -> how many adapters changed."""
    changed = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            linear = module.lora_A[name]
            if isinstance(dropout, torch.nn.Dropout) and dropout.p > 0 and isinstance(linear, torch.nn.Linear) \
                    and linear.bias is None:
                module.lora_A[name] = RecomputedDropoutA(linear, dropout.p)
                dropouts[name] = torch.nn.Identity()
                changed += 1
        if all(isinstance(a, RecomputedDropoutA) for a in module.lora_A.values()):
            module.cast_input_dtype_enabled = False
    return changed
