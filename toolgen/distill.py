"""Learning without forgetting for an add_tools stage (`add_tools.distill_weight`).

When an addition moves the parent's LoRA weights (add_tools.train all or new_rows_lora), every query's hidden state
moves with them, and the old tools' ranking drifts even where replay shows the right old tool: measured in
benchmarks/results/add_tools.md, old-only NDCG@5 fell 11-27 points while the new tools were learned. Replay's
cross-entropy only asks that the one target tool stays on top; it says nothing about the order below it, which is
what NDCG@5 reads. Distillation keeps that order: at every position whose target is a tool token, the stage also
minimises

    weight * KL(teacher || student) over the OLD tools,

each side a softmax over the parent's tool tokens only (the new tools are left out: the parent has no opinion of
them, and the stage must be free to rank them first). The teacher is the parent itself: the trainable weights as
they were when the stage started (the parent's adapter; the new rows play no part in the old tools' softmax), read
by a second forward pass without gradient and without dropout. The KL is summed over positions like the
cross-entropy, so the loop's normalisation by the update's target count applies to both.

Cost: one more forward pass per micro-batch (about a third of a training step). Not under DeepSpeed (the weights
are swapped in place, and ZeRO partitions them).
"""

import contextlib

import torch

from toolgen.loss import IGNORE, target_logits


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
    n_old: how many of them (the first ones) the parent had."""

    def __init__(self, params, tool_ids, n_old, weight):
        self.params = params
        self.teacher = [p.detach().clone() for p in params]
        self.tools = torch.as_tensor(tool_ids)
        self.old = torch.as_tensor(tool_ids[:n_old])
        self.weight = weight

    def __call__(self, model, batch, vocab_size):
        logits, labels = target_logits(model, batch, vocab_size)
        ce = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1),
                                               ignore_index=IGNORE, reduction="sum")
        at_tool = torch.isin(labels, self.tools.to(labels.device))
        if not at_tool.any():
            return ce
        training = model.training
        model.eval()   # no dropout in the teacher: its distribution is the parent's, not a noisy draw of it
        with torch.no_grad(), swapped(self.params, self.teacher):
            teacher, _ = target_logits(model, batch, vocab_size)
        model.train(training)
        old = self.old.to(logits.device)
        return ce + self.weight * kl_old_tools(teacher[at_tool][:, old], logits[at_tool][:, old])


def kl_old_tools(teacher_logits, student_logits):
    """Sum over positions of KL(softmax(teacher) || softmax(student)), both [positions x old tools]."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    s = torch.log_softmax(student_logits.float(), -1)
    return (t.exp() * (t - s)).sum()
