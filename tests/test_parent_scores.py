"""add_tools.parent_scores (toolgen/parent_scores.py): the old tools scored by the parent's last layers, the new ones
by the stage's, in training and at inference."""

import os

import pytest
import torch

from conftest import TINY
from test_add_tools import FAST, add, error_of, memorization_ranks, parent, read  # noqa: F401  (parent: a fixture)
from test_distill import retrieval_batch
from toolgen import decoding, models, parent_scores
from toolgen.config import ConfigError, load_config
from toolgen.distill import TopLayers, swapped
from toolgen.loss import IGNORE, summed_cross_entropy, target_logits, target_loss

SETS = FAST + ["add_tools.train=new_rows_lora", "add_tools.lora_learning_rate=1e-3", "add_tools.lora_layers=1",
               "add_tools.parent_scores=true"]


def test_splice_by_hand():
    own = torch.tensor([False, True, False, True])
    stage, parent = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[-1.0, -2.0, -3.0, -4.0]])
    assert parent_scores.splice(own, stage, parent).tolist() == [[-1.0, 2.0, -3.0, 4.0]]


def test_the_loss_reads_the_parent_at_tool_targets_and_the_stage_elsewhere(parent):  # noqa: F811
    """At the start (the teacher is the stage) the loss is the plain cross-entropy. Once the last layer's LoRA and the
    rows move, it is the cross-entropy of logits built by hand: at a tool target the stage's own columns (the last 3
    tools) from the stage, every other column from a whole forward pass of the parent; at other targets the stage's.
    The parent's side carries no gradient: the old tools' rows get none from tool targets."""
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    n_old = len(tool_ids) - 3
    models.train_new_rows_only(model, n_old, keep_lora=True, lora_layers=1)
    params = [p for p in model.parameters() if p.requires_grad]
    loss_fn = parent_scores.ParentScoresLoss(model, TopLayers(model, 1), tool_ids, tool_ids[n_old:], parent["dir"])
    batch, vocab = retrieval_batch(tokenizer, parent["data"]), len(tokenizer)
    model.eval()   # no dropout: the losses below see the same stage
    start = loss_fn(model, batch, vocab).item()
    assert start == pytest.approx(target_loss(model, batch, vocab).item(), abs=1e-5)
    teacher = [p.detach().clone() for p in params]
    with torch.no_grad():   # the last layer's LoRA and the new rows move (the old rows never do: a zero gradient)
        for n, p in zip([n for n, p in model.named_parameters() if p.requires_grad], params):
            moving = p[n_old:] if "trainable_tokens_delta" in n else p
            moving.add_(2.0 * torch.randn_like(moving))
    loss = loss_fn(model, batch, vocab)
    assert not model.training
    stage, labels = target_logits(model, batch, vocab)
    with torch.no_grad(), swapped(params, teacher):
        whole_parent, _ = target_logits(model, batch, vocab)
    own = torch.zeros(vocab, dtype=torch.bool)
    own[tool_ids[n_old:]] = True
    at_tool = torch.isin(labels, torch.tensor(tool_ids))[..., None]
    by_hand = summed_cross_entropy(torch.where(at_tool, torch.where(own, stage, whole_parent), stage), labels)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert abs(loss.item() - target_loss(model, batch, vocab).item()) > 0.01
    loss.backward()
    rows = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n and p.requires_grad)
    assert rows.grad[n_old:].abs().sum() > 0 and lora.grad.abs().sum() > 0
    # a micro-batch without a tool target: the plain cross-entropy
    no_tool = {k: v.clone() for k, v in batch.items()}
    no_tool["labels"][torch.isin(no_tool["labels"], torch.tensor(tool_ids))] = IGNORE
    plain = loss_fn(model, no_tool, vocab).item()
    assert plain == pytest.approx(target_loss(model, no_tool, vocab).item(), abs=1e-4)


def old_tool_logprobs(stage_dir, prompts, old, attach):
    """Log-softmax over the tools `old` alone of the next token after each prompt (merged, as evaluate runs it)."""
    tokenizer, model, _ = models.load_stage(stage_dir)
    if attach:
        assert parent_scores.attach(model, stage_dir)
    models.merge_for_inference(model)
    logprobs = decoding.next_token_logprobs(model.eval(), tokenizer, prompts)
    return torch.log_softmax(logprobs[:, tokenizer.convert_tokens_to_ids(old)], -1), (tokenizer, model)


def test_an_addition_with_parent_scores_keeps_the_old_tools_scores_and_learns_the_new(parent, tmp_path):  # noqa: F811
    """toolgen-add-tools with parent_scores: the stage folder keeps the parent's last-layer LoRA and the new columns;
    loaded and attached (then merged, as toolgen.evaluate does), the old tools' distribution on the parent's queries
    is the parent's, while without the splice the stage's own has moved; the new tools are learned; a generation
    (with a KV cache) reads the stage's own logits."""
    out = tmp_path / "parent_scores"
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out, *[a for s in SETS for a in ("--set", s)])
    stage = read(os.path.join(out, "stage.json"))
    assert stage["parent_scores"] == {"file": parent_scores.FILE, "layers": 1, "levels": 1,
                                      "own_columns": len(stage["tools_added"])}
    metrics = read(os.path.join(out, "metrics.json"))
    assert metrics["loss_last"] < metrics["loss_first"]
    prompts = [ex["messages"][:-1] for ex in read(os.path.join(parent["data"], "retrieval_training.json"))]
    old = read(os.path.join(parent["dir"], "tool_tokens.json"))
    before, _ = old_tool_logprobs(parent["dir"], prompts, old, attach=False)
    spliced, (tokenizer, model) = old_tool_logprobs(str(out), prompts, old, attach=True)
    own, _ = old_tool_logprobs(str(out), prompts, old, attach=False)
    assert torch.allclose(spliced, before, atol=1e-4), (spliced - before).abs().max()
    assert (own - before).abs().max() > 1e-2   # the stage's own last layer moved
    ranks = memorization_ranks(str(out), f"{out}.data", stage["tools_added"])   # without the splice: the stage's
    assert (ranks == 0).float().mean() >= 0.6, ranks.tolist()
    ids = torch.tensor([decoding.prompt_ids(tokenizer, prompts[0])])
    with torch.no_grad():
        cached = model(input_ids=ids, use_cache=True).logits[0, -1]
        spliced_row = model(input_ids=ids, use_cache=False).logits[0, -1]
        _, plain = models.load_stage(str(out))[:2]
        models.merge_for_inference(plain)
        assert torch.allclose(cached, plain.eval()(input_ids=ids, use_cache=True).logits[0, -1], atol=1e-5)
    assert not torch.allclose(cached, spliced_row, atol=1e-3)


def test_two_additions_in_a_row_keep_every_level(parent, tmp_path):  # noqa: F811
    """A parent_scores addition to a parent_scores addition: its file holds two levels (the first parent; the first
    addition with its own columns). Attached, on the parent's queries the first parent's tools are ranked as the
    first parent ranks them and the first addition's tools as the first addition (attached) ranks them."""
    out1, out2 = tmp_path / "one", tmp_path / "two"
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out1, *[a for s in SETS for a in ("--set", s)])
    add("--model", out1, "--api-catalog", parent["b"], "--out", out2, *[a for s in SETS for a in ("--set", s)])
    stage1, stage2 = read(os.path.join(out1, "stage.json")), read(os.path.join(out2, "stage.json"))
    assert stage2["parent_scores"]["levels"] == 2 and stage2["parent"]["path"] == str(out1)
    levels, own = parent_scores.read_levels(os.path.join(out2, parent_scores.FILE))
    _, own1 = parent_scores.read_levels(os.path.join(out1, parent_scores.FILE))
    assert levels[0][1] is None and torch.equal(levels[1][1], own1) and len(own) == len(stage2["tools_added"])
    prompts = [ex["messages"][:-1] for ex in read(os.path.join(parent["data"], "retrieval_training.json"))]
    first = read(os.path.join(parent["dir"], "tool_tokens.json"))
    for tokens, reference in ((first, parent["dir"]), (stage1["tools_added"], str(out1))):
        want, _ = old_tool_logprobs(reference, prompts, tokens, attach=reference != parent["dir"])
        got, _ = old_tool_logprobs(str(out2), prompts, tokens, attach=True)
        assert torch.allclose(got, want, atol=1e-4), (tokens[:2], (got - want).abs().max())
    ranks = memorization_ranks(str(out2), f"{out2}.data", stage2["tools_added"])
    assert (ranks == 0).float().mean() >= 0.6, ranks.tolist()
    # the levels below were scored by the last layer: an addition that reruns the last two cannot keep them
    assert "its levels hold other layers' LoRA than add_tools.lora_layers=2" in error_of(
        "--model", out1, "--api-catalog", parent["b"], "--out", tmp_path / "deeper",
        *[a for s in SETS + ["add_tools.lora_layers=2"] for a in ("--set", s)])
    assert not os.path.exists(tmp_path / "deeper")


def test_parent_scores_needs_the_top_layers_and_no_distillation(parent, tmp_path):  # noqa: F811
    base = ["train.weight_decay=0", "add_tools.train=new_rows_lora", "add_tools.lora_learning_rate=1e-3",
            "add_tools.parent_scores=true"]
    with pytest.raises(ConfigError, match="add_tools.parent_scores=true needs .*lora_layers > 0 .it is 0"):
        load_config(TINY, base)
    with pytest.raises(ConfigError, match="distill_weight 0 .it is 5.0"):
        load_config(TINY, base + ["add_tools.lora_layers=1", "add_tools.distill_weight=5"])
    assert "add_tools.parent_scores=true needs" in error_of(
        "--model", parent["dir"], "--api-catalog", parent["a"], "--out", tmp_path / "bad",
        *[a for s in SETS[:-2] + ["add_tools.parent_scores=true"] for a in ("--set", s)])
    assert not os.path.exists(tmp_path / "bad")
    assert not parent_scores.attach(models.load_stage(parent["dir"])[1], parent["dir"])   # a folder without FILE


def test_a_parent_scores_file_that_is_not_one_is_named(parent, tmp_path):  # noqa: F811
    """read_levels and attach refuse a file of another shape or of other layers, naming it (toolgen.evaluate and
    toolgen.agent turn that into their error message)."""
    from safetensors.torch import save_file
    bad = tmp_path / parent_scores.FILE
    other = {parent_scores.OWN: torch.tensor([3]), "0/0.mlp.up_proj.lora_A.other.weight": torch.zeros(1)}
    for state, needle in (({"x": torch.zeros(1)}, "unexpected key 'x'"),
                          ({"0/0.w.lora_A.default.weight": torch.zeros(1)}, "not a parent-scores file"),
                          (other, "do not fit the last 1 layers' LoRA")):
        save_file(state, str(bad))
        with pytest.raises(ValueError, match=needle) as e:
            parent_scores.attach(models.load_stage(parent["dir"])[1], str(tmp_path))
        assert str(bad) in str(e.value)
