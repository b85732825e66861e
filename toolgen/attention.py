"""`model.attn_implementation: varlen` — attention over each example of a packed row, without a mask.

A packed row (train.packing, collate.PackedCollator) holds many examples back to back. With sdpa, transformers
builds a dense [row x row] document mask from the position restarts, and the kernel that accepts a mask computes every
block of it, including the blocks that pair two different examples (a 32-example memorization row does ~32x the
attention it needs). flex_attention skips those blocks but compiles a kernel for every new row length (the reference
config's compiled path sat in its first update for 240 s on an H200: benchmarks/results/throughput.md).

Here the collator writes where each example starts (`cu_seq_lens_q/k`, transformers' names for it) and the longest
example (`max_length_q/k`); they reach this function through the model's keyword arguments, and on CUDA it calls
PyTorch's FlashAttention varlen kernel (`torch.nn.attention.varlen.varlen_attn`, causal, grouped-query heads): only
each example's own causal triangle is computed, and no mask is built. On CPU (tests) the same result comes from one
causal sdpa call per example. Registered with transformers' AttentionInterface under "varlen"; a name transformers
has no mask function for, so it builds none.
"""

import inspect

import torch
import torch.nn.functional as F

NAME = "varlen"
KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")   # what the collator adds to a batch


_FLASH = {}   # how this torch's varlen_attn is called, read once at register() (not inside a compiled graph)


def register():
    from transformers import AttentionInterface
    AttentionInterface.register(NAME, varlen_attention)
    if torch.cuda.is_available() and not _FLASH:
        from torch.nn.attention.varlen import varlen_attn
        params = inspect.signature(varlen_attn).parameters
        # torch 2.10 spells causal `is_causal=True`, later versions `window_size=(-1, 0)`
        causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
        _FLASH.update(fn=varlen_attn, causal=causal, scale="scale" in params, gqa="enable_gqa" in params)


def boundaries(lengths):
    """Lengths of the examples of a packed row -> the batch keys this attention reads."""
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
    longest = max(lengths)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     max_length_q=None, **kwargs):
    """transformers' attention signature: query [1, heads, tokens, dim], key/value [1, kv heads, tokens, dim] ->
    ([1, tokens, heads, dim], None)."""
    if cu_seq_lens_q is None or query.shape[0] != 1:
        raise ValueError("model.attn_implementation=varlen attends within the examples of one packed row: it needs "
                         "train.packing=true (the collator's cu_seq_lens_q); inference loads the model with sdpa")
    unsupported = [k for k in ("sliding_window", "softcap", "s_aux") if kwargs.get(k) is not None]
    if dropout or unsupported:   # computing plain causal attention instead would train a different model silently
        raise ValueError(f"model.attn_implementation=varlen computes plain causal attention; this model asks for "
                         f"{', '.join(unsupported) or 'attention dropout'}: use sdpa or flex_attention")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))   # [tokens, heads, dim]
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    if q.is_cuda:
        out = _flash(q, k, v, cu_seq_lens_q, max_length_q, scale)
    else:
        out = _per_example(q, k, v, cu_seq_lens_q, scale)
    return out.unsqueeze(0), None


def _flash(q, k, v, cu, longest, scale):
    """FlashAttention varlen, causal; grouped-query heads passed as they are where varlen_attn takes `enable_gqa`,
    else repeated."""
    if torch.is_autocast_enabled("cuda"):   # fp32 weights under autocast: RoPE leaves q, k in fp32, v in bf16
        q, k, v = (t.to(torch.get_autocast_dtype("cuda")) for t in (q, k, v))
    if {q.dtype, k.dtype, v.dtype} - {torch.bfloat16} and {q.dtype, k.dtype, v.dtype} - {torch.float16}:
        raise ValueError(f"model.attn_implementation=varlen runs FlashAttention, which needs bf16 or fp16 "
                         f"activations (got {q.dtype}, {k.dtype}, {v.dtype}): use model.dtype bfloat16 or bf16 "
                         "mixed precision")
    kwargs = dict(_FLASH["causal"])
    if _FLASH["scale"]:
        kwargs["scale"] = scale
    elif abs(scale - q.shape[-1] ** -0.5) > 1e-12:
        raise ValueError(f"this torch's varlen_attn has no scale argument; the model asks for {scale}")
    if _FLASH["gqa"]:
        kwargs["enable_gqa"] = True
    elif k.shape[1] != q.shape[1]:
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    return _FLASH["fn"](q, k, v, cu, cu, longest, longest, **kwargs)


def _per_example(q, k, v, cu, scale):
    """The same numbers without FlashAttention: one causal sdpa call per example (CPU, tests)."""
    starts = cu.tolist()
    outs = []
    for a, b in zip(starts[:-1], starts[1:]):
        qi, ki, vi = (t[a:b].transpose(0, 1) for t in (q, k, v))   # [heads, n, dim]
        outs.append(F.scaled_dot_product_attention(qi, ki, vi, is_causal=True, scale=scale,
                                                   enable_gqa=ki.shape[0] != qi.shape[0]).transpose(0, 1))
    return torch.cat(outs)
