"""The target loss with the LM head computed chunk by chunk: no [positions x vocabulary] tensor outlives its chunk.

With 46,985 tool tokens Llama-3.2-1B's vocabulary has 175,296 rows. The plain loss (loss.target_loss) asks the model
for the logits at every target position: a bf16 [positions x vocab] tensor, its fp32 copy, the fp32 log-softmax the
cross-entropy keeps for the backward pass and the fp32 gradient there — about 14 bytes per position and vocabulary
row, 2.4 GiB for 1,000 target positions, alive at the very moment every layer's activations are (the peak of a step).

Here the model's LM head returns its input (tool_rows.head_returns_hidden), so the forward pass ends with the
final hidden states at the target positions, and `HeadCrossEntropy` computes the summed cross-entropy over chunks of
positions, each chunk's gradients at once (softmax - one-hot, times the table and the trainable tool rows): what
stays for the backward pass is the [positions x hidden] gradient of the hidden states and the [tools x hidden] one
of the tool rows. Liger's fused linear cross-entropy does the same for one dense weight; ours keeps the frozen table
and the trainable rows apart (tool_rows.py), so the table gets no gradient and is never copied.

The numbers are the plain loss's: the same products in the same dtypes (logits in the model's dtype, softmax in
fp32), the rows' gradient summed over chunks in fp32 (tests/test_head_loss.py: loss and gradients equal). The loop
uses it when train.chunked_loss is on and the model allows it (head_layer): tool rows through tool_rows.py, a frozen
table, a model family whose forward does nothing after the LM head (SUPPORTED), not under ZeRO-3 (whose table is
gathered only inside the head's own forward), not with distillation (which reads the logits); otherwise it says why
and the plain loss runs.
Measured on the agent shape (one H200, benchmarks/results/throughput.md): the same first loss, peak reserved memory
24.2 GiB against 35.6, peak allocated 23.4 against 24.1, tokens/s 29,150 against 32,115 (one run each): off by
default, for stages that run out of memory.
"""

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from toolgen.loss import IGNORE, head_outputs
from toolgen.tool_rows import head_returns_hidden, is_sparse, parts

CHUNK_ELEMENTS = 1 << 25   # positions x vocabulary per chunk: 32 M, ~400 MB of transient fp32 at a time
# Model types whose causal-LM forward returns lm_head(hidden states) as the logits, with nothing after it (no
# soft-capping, scaling or multiplier: Gemma, Cohere, Granite, Falcon-H1 have one); others keep the plain loss.
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3"}


class HeadCrossEntropy(torch.autograd.Function):
    """sum over positions of cross_entropy(hidden @ W.T with the tool columns from `rows`, labels).

    hidden [n, h], rows [tools, h] (the trainable tool rows, in the table's dtype), weight [>= vocab, h] (frozen),
    index [tools] (the tool ids), labels [n] (no IGNORE: the caller keeps the target positions only)."""

    @staticmethod
    def forward(ctx, hidden, rows, weight, index, labels, vocab_size):
        table = weight[:vocab_size]
        chunk = max(1, CHUNK_ELEMENTS // vocab_size)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # a head-only addition (add_tools.train=new_rows_head) needs no gradient for the hidden states
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_rows = torch.zeros(rows.shape, dtype=torch.float32, device=rows.device)
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start:start + chunk], labels[start:start + chunk]
            logits = F.linear(h, table).index_copy(-1, index, F.linear(h, rows)).float()
            lse = torch.logsumexp(logits, -1)
            total += (lse - logits.gather(-1, y[:, None]).squeeze(-1)).sum()
            # d(sum CE)/d logits = softmax - one-hot (in place: one fp32 chunk at a time), in the model's dtype as
            # autograd would hand it back
            grad = logits.sub_(lse[:, None]).exp_()
            grad[torch.arange(len(y), device=y.device), y] -= 1
            grad = grad.to(h.dtype)
            grad_tools = grad.index_select(-1, index)
            grad_rows += (grad_tools.t() @ h).float()
            if grad_hidden is not None:   # the tool columns come from the rows, not from the table
                grad_hidden[start:start + chunk] = grad.index_fill_(-1, index, 0) @ table + grad_tools @ rows
            del logits, grad, grad_tools   # freed before the next chunk's logits are made
        ctx.save_for_backward(grad_hidden, grad_rows)
        ctx.dtypes = hidden.dtype, rows.dtype
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_total):
        grad_hidden, grad_rows = ctx.saved_tensors
        # scaled in fp32 and rounded once, as autograd scales the plain loss's fp32 logits gradient
        scaled = (None if grad_hidden is None else (grad_hidden.float() * grad_total).to(ctx.dtypes[0]),
                  (grad_rows * grad_total).to(ctx.dtypes[1]))
        return *scaled, None, None, None, None


def head_layer(model):
    """The LM head of a training model if the chunked loss can stand in for its logits, else None."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    head = model.get_output_embeddings()
    head = getattr(head, "token_adapter", head)   # peft's wrapper of a head tied to the embedding holds the layer
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    ok = (model_type in SUPPORTED and isinstance(head, TrainableTokensLayer) and is_sparse(head)
          and type(head.base_layer) is torch.nn.Linear and not head.base_layer.weight.requires_grad
          and head.base_layer.bias is None)
    return head if ok else None


class ChunkedTargetLoss:
    """loss_fn of step.update: loss.target_loss's value and gradients through HeadCrossEntropy. `head`: head_layer()
    of the unwrapped model (the loop calls the wrapped one: DDP, compiled regions)."""

    def __init__(self, head):
        self.head = head

    def __call__(self, model, batch, vocab_size):
        with head_returns_hidden():
            hidden, labels = head_outputs(model, batch)
        keep = labels != IGNORE
        weight, index, _, rows = parts(self.head)
        # the table's dtype, as the head computes in it (accelerate's mixed precision hands the outputs back in fp32)
        return HeadCrossEntropy.apply(hidden[keep].to(weight.dtype), rows, weight, index, labels[keep], vocab_size)


def chunked_target_loss(model, zero3=False):
    """(ChunkedTargetLoss, None) for the unwrapped training model, or (None, why the plain loss runs instead)."""
    if zero3:
        return None, "ZeRO-3 gathers the LM head's table only inside the head's own forward"
    head = head_layer(model)
    if head is None:
        return None, (f"model type {getattr(model.config, 'model_type', None)!r} is not in head_loss.SUPPORTED, or "
                      "its LM head is not a frozen table with tool rows from train.sparse_tool_rows")
    return ChunkedTargetLoss(head), None
