"""add_tools.parent_scores: an addition where the old tools keep the parent's scores, exactly, and the new tools get
their own.

Every addition that moved the parent's LoRA so far lost old tools' NDCG@5 (8-15 points with the model alone:
benchmarks/results/add_tools.md), because every query's hidden state moves with those weights; one that moved only
the new rows kept the old tools but did not learn how requests word the new ones. This aims at both (not measured
on the real catalog yet). With add_tools.lora_layers = k only the last k decoder layers' LoRA trains and the layers
below compute exactly what the parent computes (models.train_new_rows_only); the parent's last k layers are run
beside the stage's on the same input (distill.TopLayers), and wherever a tool is chosen the logits are spliced:

    logit(t) = stage's logit(t)   for t in the stage's own columns (the new tools, and those it learns anew)
               parent's logit(t)  for every other token (the old tools among them)

Training uses the spliced logits at every position whose target is a tool (the cross-entropy: the old tools' side is
the parent's, without gradient), so the new rows and the top layers learn the new tools and, from the replayed old
examples, to stay below the parent's right old tool; what is left of the old tools' loss is only where a new tool
outranks one. Other targets (text) read the stage's own logits.

An addition to an addition that scored this way keeps every level: its parent's own columns from the parent's top
layers, the columns the parent had from its own parent from those, and so on down to the first parent, which scores
the rest. Each level is one more rerun of the k layers.

Inference (`attach`): the stage folder keeps those levels' LoRA weights of the k layers and their columns (FILE).
A copy of the k layers holds each, and a forward of the model without a KV cache (a tool's choice:
decoding.next_token_logprobs, ranking, memorization, the agent's tool step) gets the spliced logits; a generation
(with a cache) reads the stage's own. Cost: k/L of a forward pass more per level. Not under DeepSpeed (as
new_rows_lora: its gradient hook is not ZeRO's).
"""

import copy
import os

import torch

from toolgen.distill import rerun, swapped
from toolgen.loss import summed_cross_entropy, target_logits, target_positions
from toolgen.models import decoder_layers

FILE = "parent_scores.safetensors"
OWN = "own_columns"   # FILE's key of the stage's own columns (token ids); "j/..." keys: level j (0: the first parent)


def _top_lora(model, k):
    """{name relative to the last k layers ('0.self_attn.q_proj.lora_A.default.weight'): parameter} of their LoRA."""
    layers, _ = decoder_layers(model)
    top = torch.nn.ModuleList(layers[len(layers) - k:])
    return {n: p for n, p in top.named_parameters() if "lora_" in n}


def _mask(ids, size, device=None):
    mask = torch.zeros(size, dtype=torch.bool, device=device)
    mask[torch.as_tensor(ids, device=device)] = True
    return mask


def splice(own, stage_logits, parent_logits):
    """The stage's logits in its own columns (own: a [vocab] bool mask), the parent's in all others."""
    return torch.where(own, stage_logits, parent_logits.to(stage_logits.dtype))


def read_levels(path):
    """FILE -> ([(LoRA weights {relative name: tensor}, the level's columns, None for the first parent's)], the
    stage's own columns); ValueError naming the file when it is not one."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    own, by_level = state.pop(OWN, None), {}
    for key, value in state.items():
        level, _, name = key.partition("/")
        if not (level.isdigit() and name):
            raise ValueError(f"{path}: unexpected key {key!r} (a parent-scores file holds {OWN} and 'level/name')")
        by_level.setdefault(int(level), {})[name] = value
    levels = [(by_level.get(j, {}), by_level.get(j, {}).pop("columns", None)) for j in range(len(by_level))]
    if own is None or not levels or levels[0][1] is not None or any(c is None for _, c in levels[1:]) \
            or any(not lora for lora, _ in levels):
        raise ValueError(f"{path}: not a parent-scores file (its {OWN}, then per level the LoRA of the last layers "
                         "and, above the first, the level's columns)")
    return levels, own


def levels_state(levels, own):
    """read_levels' inverse: the flat {key: tensor} that FILE holds."""
    state = {OWN: own.cpu()}
    for j, (lora, columns) in enumerate(levels):
        state.update({f"{j}/{n}": t.detach().cpu().contiguous() for n, t in lora.items()})
        if columns is not None:
            state[f"{j}/columns"] = columns.cpu()
    return state


class ParentScoresLoss:
    """The loss of an add_tools update with parent_scores: the summed cross-entropy over the spliced logits at the
    positions whose target is a tool, over the stage's own elsewhere.

    top: distill.TopLayers on the stage's model (k = add_tools.lora_layers); tool_ids: every tool token's id; own_ids:
    the ones the stage scores itself (new tools, those learned anew: distill.old_tool_ids gives the others);
    parent_dir: the parent stage (its FILE, when it has one, brings the levels below it)."""

    def __init__(self, model, top, tool_ids, own_ids, parent_dir):
        self.top = top
        self.named = _top_lora(model, len(top.layers))
        parent = {n: p.detach().clone() for n, p in self.named.items()}   # the parent's, as the stage starts
        self.levels, path = [(parent, None)], os.path.join(parent_dir, FILE)
        if os.path.exists(path):   # an addition to an addition that scored this way: its levels, then itself
            levels, parent_own = read_levels(path)
            for lora, _ in levels:
                if set(lora) != set(self.named):
                    raise ValueError(f"{path}: its levels hold other layers' LoRA than add_tools.lora_layers="
                                     f"{len(top.layers)} gives (e.g. {sorted(set(lora) ^ set(self.named))[:2]})")
            self.levels = [({n: t.to(self.named[n]) for n, t in lora.items()}, columns) for lora, columns in levels]
            self.levels.append((parent, parent_own))
        self.tools = torch.as_tensor(tool_ids)
        self.own_ids = torch.as_tensor(sorted(own_ids))

    def parent_logits(self, positions, vocab_size, device):
        """The parent's spliced logits at `positions` of the last student forward: each level's top layers rerun."""
        out = None
        for j, (lora, columns) in enumerate(self.levels):
            with swapped([self.named[n] for n in lora], list(lora.values())):
                logits = self.top.logits(positions, slice(0, vocab_size), again=j + 1 < len(self.levels))
            out = logits if columns is None else splice(_mask(columns, vocab_size, device), logits, out)
        return out

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
            with torch.no_grad():
                parent = self.parent_logits(positions[keep], vocab_size, device)
        finally:
            model.train(training)
        kept = logits[:, keep]
        mixed = torch.where(at_tool[:, keep, None], splice(_mask(self.own_ids, vocab_size, device), kept, parent), kept)
        return summed_cross_entropy(logits.index_copy(1, keep, mixed), labels)

    def state(self):
        """What FILE keeps: every level's LoRA weights of the top layers and columns, and the stage's own columns."""
        return levels_state(self.levels, self.own_ids)


class _Splice:
    """The hooks of an attached stage: the input of its first top layer kept on a forward without a cache, and the
    model's logits spliced with the parent's levels from it (the copied layers, the final norm, the LM head)."""

    def __init__(self, model, levels, own):
        layers, self.norm = decoder_layers(model)
        self.levels, self.own, self.seen = levels, own, None   # levels: [(copied layers, columns' mask or None)]
        self.head = model.get_output_embeddings()
        layers[len(layers) - len(levels[0][0])].register_forward_pre_hook(self._keep, with_kwargs=True)
        model.get_base_model().register_forward_hook(self._splice, with_kwargs=True)

    def _keep(self, module, args, kwargs):
        cached = kwargs.get("past_key_values", kwargs.get("past_key_value")) is not None
        self.seen = None if cached or torch.is_grad_enabled() else (args, kwargs)

    @torch.no_grad()
    def _splice(self, module, call_args, call_kwargs, output):
        if self.seen is None or getattr(output, "logits", None) is None:   # a cached step, or no logits asked for
            self.seen = None
            return output
        kept = call_kwargs.get("logits_to_keep", 0)   # the positions the model's logits are of (its own rule)
        if isinstance(kept, int):
            kept = slice(-kept if kept else 0, None)
        parent = None
        for layers, mask in self.levels:
            logits = rerun(layers, self.norm, self.head, self.seen, kept)
            parent = logits if mask is None else splice(mask.to(logits.device), logits, parent)
        self.seen = None
        width = min(parent.shape[-1], output.logits.shape[-1], len(self.own))
        output.logits[..., :width] = splice(self.own[:width].to(parent.device), output.logits[..., :width],
                                            parent[..., :width])
        return output


def attach(model, stage_dir):
    """A loaded stage folder (models.load_stage, before merge_for_inference) scores tools as it trained: each level's
    columns by its copy of the top layers, its own by itself (a stage without FILE is left as it is) -> whether it
    did. ValueError naming the file when it does not fit the model."""
    path = os.path.join(stage_dir, FILE)
    if not os.path.exists(path):
        return False
    levels, own_ids = read_levels(path)
    layers, _ = decoder_layers(model)
    k = 1 + max(int(n.split(".", 1)[0]) for n in levels[0][0])
    if not 0 < k <= len(layers):
        raise ValueError(f"{path}: its levels hold {k} layers' LoRA; the model has {len(layers)} decoder layers")
    copies, size = torch.nn.ModuleList(), model.get_output_embeddings().weight.shape[0]
    for lora, _ in levels:
        top = copy.deepcopy(torch.nn.ModuleList(layers[len(layers) - k:]))
        names = {n for n, _ in top.named_parameters() if "lora_" in n}
        if set(lora) != names:
            raise ValueError(f"{path}: its weights do not fit the last {k} layers' LoRA (file only: "
                             f"{sorted(set(lora) - names)[:3]}, model only: {sorted(names - set(lora))[:3]})")
        top.load_state_dict(lora, strict=False)
        copies.append(top.eval().requires_grad_(False))
    # a submodule of the model: it moves with it, and merge_for_inference folds each level's LoRA into its copy
    model.get_base_model().add_module("toolgen_parent_layers", copies)
    _Splice(model, [(top, None if c is None else _mask(c, size)) for top, (_, c) in zip(copies, levels)],
            _mask(own_ids, size))   # its hooks keep it
    return True
