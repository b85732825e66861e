"""Tool-token rows that cost only what they train.

peft's `trainable_token_indices` layer builds, on every forward, a merged copy of the whole table
(`W = weight.index_copy(0, tool_ids, delta)`, [vocab x hidden]) and runs `F.embedding` / `F.linear` with it. Autograd then
computes the gradient of that whole merged table — a dense [vocab x hidden] tensor for the embedding and another for a
tied LM head — only to keep its tool rows. With Llama-3.2-1B + 46,985 tool tokens each such tensor is 175,296 x 2,048.

`sparse_tool_rows(model)` gives each of those layers a forward with the same result in which the frozen table is used
as it is (no copy, no gradient) and the tool rows come from the trainable delta alone:
  embedding: rows of the frozen table, replaced where the id is a tool id by the delta row (`torch.where`);
  LM head:   logits of the frozen table, with the tool columns replaced by `x @ delta.T` (`index_copy`).
The gradient then reaches only the delta ([tools x hidden]). Saving, loading and merging are peft's, unchanged: the
layer's parameters and state dict are the same. `tests/test_fast_paths.py` checks equal losses and gradients.
"""

import contextlib
import types

import torch
import torch.nn.functional as F


def _slots(layer, name, device):
    """(tool ids, id -> row of the delta or -1), built once per adapter and device."""
    cache = layer.__dict__.setdefault("_toolgen_slots", {})
    if (name, device) not in cache:
        index = torch.tensor(layer.token_indices[name], device=device)
        slot = torch.full((layer.base_layer.weight.shape[0],), -1, dtype=torch.long, device=device)
        slot[index] = torch.arange(len(index), device=device)
        cache[(name, device)] = index, slot
    return cache[(name, device)]


def parts(layer):
    """(frozen table, tool ids, id -> delta row or -1, the trainable rows in the table's dtype) of a trainable-token
    layer's one active adapter."""
    weight = layer.base_layer.weight
    name = layer.active_adapters[0]
    index, slot = _slots(layer, name, weight.device)
    return weight, index, slot, layer.trainable_tokens_delta[name].to(weight.dtype)


def _forward(self, x, *args, **kwargs):
    active = self.active_adapters
    if self.disable_adapters or self.merged or len(active) != 1:
        return type(self).forward(self, x, *args, **kwargs)   # the cases peft handles its own way
    base = self.base_layer
    weight, index, slot, delta = parts(self)
    if isinstance(base, torch.nn.Embedding):
        out = F.embedding(x, weight, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse)
        tool_slot = slot[x]
        out = torch.where((tool_slot >= 0).unsqueeze(-1), F.embedding(tool_slot.clamp(min=0), delta), out)
        scale = self._get_embed_scale()
        return out * scale.to(out.dtype) if scale is not None else out
    if isinstance(base, torch.nn.Linear):   # an LM head (tied to the embedding, or its own trainable rows)
        if _HIDDEN_OUT[0]:
            return x   # head_loss.py computes the logits itself, chunk by chunk
        return F.linear(x, weight).index_copy(-1, index, F.linear(x, delta))
    return type(self).forward(self, x, *args, **kwargs)


def sparse_tool_rows(model):
    """Give every trainable-token layer of a peft model the row-sparse forward; returns how many were changed."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    layers = [m for m in model.modules() if isinstance(m, TrainableTokensLayer)]
    for layer in layers:
        layer.forward = types.MethodType(_forward, layer)
    return len(layers)


def is_sparse(layer):
    """Whether sparse_tool_rows gave `layer` its forward."""
    return getattr(layer.forward, "__func__", None) is _forward


_HIDDEN_OUT = [False]   # one switch, read by every sparse head (also inside a torch.compile'd head, which guards it)


@contextlib.contextmanager
def head_returns_hidden():
    """Inside the block an LM head made sparse above returns its input: the model's `logits` are then the final
    hidden states at the positions asked for (toolgen/head_loss.py)."""
    _HIDDEN_OUT[0] = True
    try:
        yield
    finally:
        _HIDDEN_OUT[0] = False
