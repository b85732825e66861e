"""What the stages minimise: the summed cross-entropy of the target tokens, and how many there are.

The loop divides the sum by the target count of the whole update (all micro-batches, all processes), so the loss and
the gradient do not depend on how an update is split into micro-batches or processes.
"""

import torch

from toolgen import attention

IGNORE = -100   # the label of a token that carries no loss (prompt, role headers, padding)


def count_targets(batch):
    """Target tokens of a batch: labels are shifted (position t predicts token t+1), so the first label never counts."""
    return (batch["labels"][:, 1:] != IGNORE).sum()


def target_positions(batch):
    """The positions where some row has a target (labels shifted: position t predicts token t+1)."""
    return (batch["labels"][:, 1:] != IGNORE).any(0).nonzero().squeeze(-1)


def head_outputs(model, batch, positions=None):
    """What the LM head gives at `positions` (default: target_positions) and the labels there: ([rows, positions,
    ...], [rows, positions]). `logits_to_keep` takes the positions, so the head never runs over the whole batch; with
    left padding the short stage-1/2 examples share their target positions."""
    positions = target_positions(batch) if positions is None else positions
    varlen = {k: batch[k] for k in attention.KEYS if k in batch}   # where the examples of a packed row start
    out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                position_ids=batch["position_ids"], logits_to_keep=positions, use_cache=False, **varlen)
    return out.logits, batch["labels"][:, 1:][:, positions]


def target_logits(model, batch, vocab_size, positions=None, columns=None):
    """The logits at `positions` (default: target_positions) and the labels there: ([rows, positions, vocab] fp32,
    [rows, positions]); `columns`: only those vocabulary ids (default: the real vocabulary).

    The [tokens x vocab] logits tensor of the whole batch is never built (head_outputs). Logits are cut to the real
    vocabulary: the padding rows (the vocabulary is padded to a multiple of 64) are never predicted.
    """
    logits, labels = head_outputs(model, batch, positions)
    logits = logits[..., :vocab_size] if columns is None else logits[..., columns]
    return logits.float(), labels


def summed_cross_entropy(logits, labels):
    """Cross-entropy summed over the labels that are not IGNORE: logits [..., vocab], labels [...]."""
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")


def target_loss(model, batch, vocab_size):
    """Summed cross-entropy over the target tokens (the LM head run only at positions where some row has one)."""
    return summed_cross_entropy(*target_logits(model, batch, vocab_size))
