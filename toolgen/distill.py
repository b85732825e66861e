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

The old tools' softmax leaves out the new tools, so the KL cannot see a new tool climbing above the old ones on an
old tool's query, and measured on the real catalog they did (old-only NDCG@5 -8 points with the LoRA of the last 4
layers moving: benchmarks/results/add_tools.md). With add_tools.distill_new_tools, at the positions whose target is
an old tool the teacher is the parent over the whole new catalog, which gives the new tools no mass (it has none of
them): the student's softmax runs over every tool there, and the KL is the old order's KL - log(1 - m), m the mass
the student gives the new tools; at the new tools' own targets it stays over the old tools, so that the new one can
rise there.

Cost: one more forward pass per micro-batch (about a third of a training step). With add_tools.lora_layers = k
only the last k decoder layers' LoRA trains, and the layers below compute exactly what the parent computes (their
weights are the parent's, their dropout off): the teacher then reruns only those k layers, the norm and the head from
the hidden state the student's own forward gave the first of them (TopLayers), a k/L share of a forward pass. Not
under DeepSpeed (the weights are swapped in place, and ZeRO partitions them).
"""

import contextlib
import json
import os

import torch

from toolgen.loss import summed_cross_entropy, target_logits, target_positions
from toolgen.models import decoder_layers


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

    def __init__(self, params, tool_ids, old_ids, weight, top=None, new_too=False):
        self.params, self.top = params, top   # top: TopLayers, the teacher's share of a forward (lora_layers)
        self.new_too = new_too                # add_tools.distill_new_tools
        self.teacher = [p.detach().clone() for p in params]
        device = params[0].device
        place = {t: k for k, t in enumerate(tool_ids)}
        self.old_at = torch.as_tensor([place[i] for i in old_ids], device=device)   # old_ids' places in tool_ids
        self.tools = torch.as_tensor(tool_ids, device=device)
        self.old = torch.as_tensor(old_ids, device=device)
        self.weight = weight

    def __call__(self, model, batch, vocab_size):
        positions = target_positions(batch)
        logits, labels = target_logits(model, batch, vocab_size, positions)
        ce = summed_cross_entropy(logits, labels)
        tools, old, old_at = (t.to(labels.device) for t in (self.tools, self.old, self.old_at))   # no copy once there
        at_tool = torch.isin(labels, tools)                   # [rows, positions]: this row's target is a tool
        keep = at_tool.any(0).nonzero().squeeze(-1)           # the positions the teacher is asked about
        # The teacher runs on every micro-batch, also one without a tool target: under DDP each forward takes part in
        # the buffers' broadcast, and ranks that skipped it would fall out of step with the others.
        training = model.training
        model.eval()   # no dropout in the teacher: its distribution is the parent's, not a noisy draw of it
        try:
            with torch.no_grad(), swapped(self.params, self.teacher):
                if self.top is None:
                    teacher, _ = target_logits(model, batch, vocab_size, positions[keep], old)
                else:
                    teacher = self.top.logits(positions[keep], old)
        finally:
            model.train(training)
        mask, student = at_tool[:, keep], logits[:, keep]
        if not self.new_too:
            return ce + self.weight * kl_old_tools(teacher[mask], student[..., old][mask])
        on_old = torch.isin(labels[:, keep], old) & mask   # an old tool's target: the new tools get no mass
        rest = mask & ~on_old                              # a new tool's (or one learned anew): the old order only
        wide = torch.log_softmax(student[on_old][..., tools], -1)[..., old_at]
        return ce + self.weight * (kl_to_wider(teacher[on_old], wide)
                                   + kl_old_tools(teacher[rest], student[..., old][rest]))


class TopLayers:
    """The teacher's forward from the last k decoder layers on (add_tools.lora_layers = k): a pre-hook keeps the
    input of the first of them (hidden state and keyword arguments: mask, rotary embeddings, packed-row offsets) each
    time the student's forward runs with gradient, and `logits` runs those k layers, the final norm and the LM head on
    it again, under the autocast the student ran in. The caller swaps in the teacher's weights and sets eval mode.
    The same as a whole second forward pass (tested) where no new tool's token is read before a target: the layers
    below read its input row as it is now, the whole teacher as it started (in stage-1/2 examples a tool token is
    only a target; in a replayed trajectory an earlier call's token is read)."""

    def __init__(self, model, k):
        layers, self.norm = decoder_layers(model)
        self.layers, self.head, self.seen = layers[len(layers) - k:], model.get_output_embeddings(), None
        self.layers[0].register_forward_pre_hook(self._keep, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        if torch.is_grad_enabled():   # the student's forward, not the teacher's nor an evaluation's
            device = (args[0] if args else kwargs["hidden_states"]).device.type
            self.seen = args, kwargs, (device, torch.get_autocast_dtype(device), torch.is_autocast_enabled(device))

    def logits(self, positions, columns, again=False):
        """[rows, positions, columns] fp32 logits of the last student input seen (then forgotten, unless it is to be
        read again: parent_scores reruns the layers once per level of its parent)."""
        (args, kwargs, (device, dtype, enabled)), self.seen = self.seen, self.seen if again else None
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            return rerun(self.layers, self.norm, self.head, (args, kwargs), positions)[..., columns].float()


def rerun(layers, norm, head, seen, positions):
    """`layers`, the final norm and the LM head run again from a kept input of the first layer (seen: the (args,
    kwargs) a forward pre-hook got) -> the logits at `positions` (TopLayers; parent_scores' inference splice)."""
    args, kwargs = seen
    hidden = args[0] if args else kwargs["hidden_states"]
    kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
    for layer in layers:
        hidden = layer(hidden, *args[1:], **kwargs)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden   # older transformers return tuples
    return head(norm(hidden[:, positions]))   # the norm is per position: only the asked ones go through it and the head


def kl_to_wider(teacher_logits, student_logprobs):
    """Sum over positions of KL(softmax(teacher) || student), the teacher over the old tools and the student's
    log-probabilities normalised over every tool but read at the old ones: the teacher gives the other tools no
    mass, so this is the old tools' KL - log(1 - the student's mass on the others)."""
    t = torch.log_softmax(teacher_logits.float(), -1)
    return (t.exp() * (t - student_logprobs.float())).sum()


def kl_old_tools(teacher_logits, student_logits):
    """Sum over positions of KL(softmax(teacher) || softmax(student)), both [positions x old tools]."""
    return kl_to_wider(teacher_logits, torch.log_softmax(student_logits.float(), -1))


def old_tool_ids(data_dir, tool_tokens, tool_ids, n_old):
    """The ids of the parent's n_old tools (first in tool_tokens) less those the addition's report says it learns
    anew (`tools_replaced`, `distractors_promoted` of add_tools_report.json in its data folder)."""
    with open(os.path.join(data_dir, "add_tools_report.json"), encoding="utf-8") as f:
        report = json.load(f)
    anew = set(report["tools_replaced"]) | set(report["distractors_promoted"])
    return [i for token, i in zip(tool_tokens[:n_old], tool_ids[:n_old]) if token not in anew]
