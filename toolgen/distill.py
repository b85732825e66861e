"""Learning without forgetting for an add_tools stage (`add_tools.distill_weight`).

When an addition moves the parent's LoRA weights (add_tools.train all or new_rows_lora), every query's hidden state
moves with them, and the old tools' ranking drifts even where replay shows the right old tool: measured in
benchmarks/results/add_tools.md, old-only NDCG@5 fell 11-27 points while the new tools were learned. Replay's
cross-entropy only asks that the one target tool stays on top; it says nothing about the order below it, which is
what NDCG@5 reads. Distillation keeps that order: at every position whose target is a tool token, the stage also
minimises

    weight * KL(teacher || student) over the OLD tools,

each side a softmax over the parent's tool tokens only (the new tools are left out: the parent has no opinion of
them, and the stage must be free to rank them first; so are the parent's tokens that the addition learns anew —
documentation replaced, a distractor's name given to a new API — where the KL would pull back to the old text).
The teacher is the parent itself: the trainable weights as they were when the stage started (the parent's adapter;
the new rows play no part in the old tools' softmax), read by a second forward pass without gradient and without
dropout, at the positions whose target is a tool and for the old tools' columns only. The KL is summed over
positions like the cross-entropy, so the loop's normalisation by the update's target count applies to both; the
stage's logged loss is their sum (not comparable with an addition's without distillation).

Cost: one more forward pass per micro-batch (about a third of a training step). Not under DeepSpeed (the weights
are swapped in place, and ZeRO partitions them).
"""

import contextlib
import json
import os

import torch

from toolgen.loss import summed_cross_entropy, target_logits, target_positions


@contextlib.contextmanager
def swapped(params, values):
    """The parameters hold `values` inside the block (the same Parameter objects, so any wrapper of the model —
    DDP, compiled regions — sees them), and their own tensors again after it."""
    own = [p.data for p in params]
    for p, v in zip(params, values):
        p.data = v
    try:
        yield
    finally:
        for p, v in zip(params, own):
            p.data = v


class OldToolDistillation:
    """The loss of an add_tools update with distillation: cross-entropy + weight * KL over the old tools.

    params: the stage's trainable parameters (their values now are the teacher's); tool_ids: every tool token's id;
    old_ids: the parent's tools whose order is kept — not those the addition learns anew (documentation replaced,
    distractor names promoted to new APIs: toolgen-add-tools's report), where the KL would pull back to the old text."""

    def __init__(self, params, tool_ids, old_ids, weight):
        self.params = params
        self.teacher = [p.detach().clone() for p in params]
        device = params[0].device
        self.tools = torch.as_tensor(tool_ids, device=device)
        self.old = torch.as_tensor(old_ids, device=device)
        self.weight = weight

    def __call__(self, model, batch, vocab_size):
        positions = target_positions(batch)
        logits, labels = target_logits(model, batch, vocab_size, positions)
        ce = summed_cross_entropy(logits, labels)
        tools, old = self.tools.to(labels.device), self.old.to(labels.device)   # no copy once on the device
        at_tool = torch.isin(labels, tools)                   # [rows, positions]: this row's target is a tool
        keep = at_tool.any(0).nonzero().squeeze(-1)           # the positions the teacher is asked about
        # The teacher runs on every micro-batch, also one without a tool target: under DDP each forward takes part in
        # the buffers' broadcast, and ranks that skipped it would fall out of step with the others.
        training = model.training
        model.eval()   # no dropout in the teacher: its distribution is the parent's, not a noisy draw of it
        try:
            with torch.no_grad(), swapped(self.params, self.teacher):
                teacher, _ = target_logits(model, batch, vocab_size, positions[keep], old)
        finally:
            model.train(training)
        mask = at_tool[:, keep]
        return ce + self.weight * kl_old_tools(teacher[mask], logits[:, keep][..., old][mask])


def kl_old_tools(teacher_logits, student_logits):
    """Sum over positions of KL(softmax(teacher) || softmax(student)), both [positions x old tools]."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum()


def old_tool_ids(data_dir, tool_tokens, tool_ids, n_old):
    """The ids of the parent's n_old tools (first in tool_tokens) less those the addition's report says it learns
    anew (`tools_replaced`, `distractors_promoted` of add_tools_report.json in its data folder)."""
    with open(os.path.join(data_dir, "add_tools_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    anew = set(report["tools_replaced"]) | set(report["distractors_promoted"])
    return [i for token, i in zip(tool_tokens[:n_old], tool_ids[:n_old]) if token not in anew]
