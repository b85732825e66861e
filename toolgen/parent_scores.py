"""add_tools.parent_scores: an addition where the old tools keep the parent's scores, exactly, and the new tools get
their own.

Every addition that moved the parent's LoRA so far lost old tools' NDCG@5 (8-15 points with the model alone:
benchmarks/results/add_tools.md), because every query's hidden state moves with those weights; one that moved only
the new rows kept the old tools but did not learn how requests word the new ones. Here both hold at once. With
add_tools.lora_layers = k only the last k decoder layers' LoRA trains and the layers below compute exactly what the
parent computes (models.train_new_rows_only); the parent's last k layers are run beside the stage's on the same input
(distill.TopLayers), and wherever a tool is chosen the logits are spliced:

    logit(t) = stage's logit(t)   for t in the stage's own columns (the new tools, and those it learns anew)
               parent's logit(t)  for every other token (the old tools among them)

Training uses the spliced logits at every position whose target is a tool (the cross-entropy: the old tools' side is
the parent's, without gradient), so the new rows and the top layers learn the new tools and, from the replayed old
examples, to stay below the parent's right old tool; what is left of the old tools' loss is only where a new tool
outranks one. Other targets (text) read the stage's own logits.

Inference (`attach`): the stage folder keeps the parent's LoRA weights of those k layers (FILE). A copy of the k
layers holds them, and a forward of the model without a KV cache (a tool's choice: decoding.next_token_logprobs,
ranking, memorization, the agent's tool step) gets the spliced logits; a generation (with a cache) reads the stage's
own. Cost: k/L of a forward pass more. Not under DeepSpeed (as new_rows_lora: its gradient hook is not ZeRO's).
"""

import copy
import os

import torch

from toolgen.distill import swapped
from toolgen.loss import summed_cross_entropy, target_logits, target_positions
from toolgen.models import decoder_layers

FILE = "parent_scores.safetensors"
OWN = "own_columns"   # the key of the stage's own columns (token ids) in FILE


def _top_lora(model, k):
    """{name relative to the last k layers ('0.self_attn.q_proj.lora_A.default.weight'): parameter} of their LoRA."""
    layers, _ = decoder_layers(model)
    top = torch.nn.ModuleList(layers[len(layers) - k:])
    return {n: p for n, p in top.named_parameters() if "lora_" in n}


def splice(own, stage_logits, parent_logits):
    """The stage's logits in its own columns (own: a [vocab] bool mask), the parent's in all others."""
    return torch.where(own, stage_logits, parent_logits.to(stage_logits.dtype))


class ParentScoresLoss:
    """The loss of an add_tools update with parent_scores: the summed cross-entropy over the spliced logits at the
    positions whose target is a tool, over the stage's own elsewhere.

    top: distill.TopLayers on the stage's model (k = add_tools.lora_layers); tool_ids: every tool token's id; own_ids:
    the ones the stage scores itself (new tools, those learned anew: distill.old_tool_ids gives the others)."""

    def __init__(self, model, top, tool_ids, own_ids):
        self.top = top
        self.named = _top_lora(model, len(top.layers))
        self.teacher = {n: p.detach().clone() for n, p in self.named.items()}   # the parent's, as the stage starts
        self.tools = torch.as_tensor(tool_ids)
        self.own_ids = torch.as_tensor(sorted(own_ids))

    def __call__(self, model, batch, vocab_size):
        positions = target_positions(batch)
        logits, labels = target_logits(model, batch, vocab_size, positions)
        device = labels.device
        at_tool = torch.isin(labels, self.tools.to(device))
        keep = at_tool.any(0).nonzero().squeeze(-1)
        # The teacher runs on every micro-batch (as in distill.OldToolDistillation: DDP's buffer broadcast per forward)
        training = model.training
        model.eval()   # the parent's scores, not a dropout draw of them
        try:
            with torch.no_grad(), swapped(list(self.named.values()), list(self.teacher.values())):
                parent = self.top.logits(positions[keep], slice(0, vocab_size))
        finally:
            model.train(training)
        own = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        own[self.own_ids.to(device)] = True
        kept = logits[:, keep]
        mixed = torch.where(at_tool[:, keep, None], splice(own, kept, parent), kept)
        return summed_cross_entropy(logits.index_copy(1, keep, mixed), labels)

    def state(self):
        """What FILE keeps: the parent's LoRA weights of the top layers and the stage's own columns."""
        return {**{n: t.cpu().contiguous() for n, t in self.teacher.items()}, OWN: self.own_ids.cpu()}


class _Splice:
    """The hooks of an attached stage: the input of its first top layer kept on a forward without a cache, and the
    model's logits spliced with the parent's from it (the copied layers, the final norm, the LM head)."""

    def __init__(self, model, parent_layers, own):
        layers, self.norm = decoder_layers(model)
        self.parent, self.own, self.seen = parent_layers, own, None
        self.head = model.get_output_embeddings()
        layers[len(layers) - len(parent_layers)].register_forward_pre_hook(self._keep, with_kwargs=True)
        model.get_base_model().register_forward_hook(self._splice, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        cached = kwargs.get("past_key_values", kwargs.get("past_key_value")) is not None
        self.seen = None if cached or torch.is_grad_enabled() else (args, kwargs)

    @torch.no_grad()
    def _splice(self, module, call_args, call_kwargs, output):
        if self.seen is None:
            return output
        (args, kwargs), self.seen = self.seen, None
        hidden = args[0] if args else kwargs["hidden_states"]
        kwargs = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        for layer in self.parent:
            hidden = layer(hidden, *args[1:], **kwargs)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        kept = call_kwargs.get("logits_to_keep", 0)   # the positions the model's logits are of (its own rule)
        if isinstance(kept, int):
            kept = slice(-kept if kept else 0, None)
        parent = self.head(self.norm(hidden[:, kept]))
        width = min(parent.shape[-1], output.logits.shape[-1], len(self.own))
        output.logits[..., :width] = splice(self.own[:width].to(parent.device), output.logits[..., :width],
                                            parent[..., :width])
        return output


def attach(model, stage_dir):
    """A loaded stage folder (models.load_stage, before merge_for_inference) scores tools as it trained: the old ones
    by the parent's top layers, the new ones by its own (a stage without FILE is left as it is) -> whether it did."""
    from safetensors import safe_open
    path = os.path.join(stage_dir, FILE)
    if not os.path.exists(path):
        return False
    with safe_open(path, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    own_ids = state.pop(OWN, None)
    k = 1 + max((int(n.split(".", 1)[0]) for n in state), default=-1)
    layers, _ = decoder_layers(model)
    if own_ids is None or not 0 < k <= len(layers):
        raise ValueError(f"{path}: not a parent-scores file of this model ({OWN} and the LoRA of its last layers)")
    parent = copy.deepcopy(torch.nn.ModuleList(layers[len(layers) - k:]))
    names = {n for n, _ in parent.named_parameters() if "lora_" in n}
    if set(state) != names:
        raise ValueError(f"{path}: its weights do not fit the last {k} layers' LoRA (file only: "
                         f"{sorted(set(state) - names)[:3]}, model only: {sorted(names - set(state))[:3]})")
    parent.load_state_dict(state, strict=False)
    parent.eval().requires_grad_(False)
    # a submodule of the model: it moves with it, and merge_for_inference folds the parent's LoRA into the copies
    model.get_base_model().add_module("toolgen_parent_layers", parent)
    own = torch.zeros(model.get_output_embeddings().weight.shape[0], dtype=torch.bool)
    own[own_ids] = True
    _Splice(model, parent, own)   # its hooks keep it
    return True
