"""add_tools.distill_weight (toolgen/distill.py): the KL over the old tools, its teacher, and what it buys."""

import json
import math
import os

import pytest
import torch

from conftest import TINY
from test_add_tools import FAST, add, error_of, memorization_ranks, parent, read  # noqa: F401  (parent: a fixture)
from toolgen import decoding, models
from toolgen.collate import LeftPadCollator, tokenize_messages
from toolgen.config import ConfigError, load_config
from toolgen.distill import OldToolDistillation, kl_old_tools, old_tool_ids
from toolgen.loss import IGNORE, target_loss


def test_kl_over_the_old_tools_by_hand():
    # teacher softmax (1/4, 3/4), student (1/2, 1/2): 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812; the same position twice
    teacher = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    student = torch.zeros(2, 2)
    assert kl_old_tools(teacher, student).item() == pytest.approx(2 * (0.25 * math.log(0.5) + 0.75 * math.log(1.5)))
    assert kl_old_tools(student, student).item() == 0.0


def retrieval_batch(tokenizer, data_dir, n=6):
    examples = read(os.path.join(data_dir, "retrieval_training.json"))[:n]
    return LeftPadCollator(tokenizer.pad_token_id)([tokenize_messages(tokenizer, ex["messages"], 256)
                                                    for ex in examples])


def test_the_teacher_is_the_stage_as_it_started(parent):  # noqa: F811
    """At the start the KL is zero (the loss is the cross-entropy); once a LoRA weight moves it is not, the teacher
    keeps the starting weights, and the stage's own weights and train mode are back after each call."""
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_old = len(tool_ids) - 3
    distill = OldToolDistillation(params, tool_ids, tool_ids[:n_old], weight=2.0)
    batch = retrieval_batch(tokenizer, parent["data"])
    vocab = len(tokenizer)
    model.eval()   # no dropout: the two losses below see the same student
    assert distill(model, batch, vocab).item() == pytest.approx(target_loss(model, batch, vocab).item(), abs=1e-5)
    lora = next(p for n, p in model.named_parameters() if "lora_B" in n)
    with torch.no_grad():   # every LoRA B and tool row moved (the tiny model's tool scores hardly follow one matrix)
        for p in params:
            p.add_(2.0 * torch.randn_like(p))
    moved = [p.detach().clone() for p in params]
    model.train()
    with_kl = distill(model, batch, vocab)
    assert model.training and all(torch.equal(p, m) for p, m in zip(params, moved))
    model.eval()
    assert with_kl.item() > target_loss(model, batch, vocab).item() + 0.01
    with_kl.backward()
    assert lora.grad is not None and lora.grad.abs().sum() > 0
    # a micro-batch without a tool target: the cross-entropy alone (the teacher still runs: DDP's collectives)
    no_tool = {k: v.clone() for k, v in batch.items()}
    no_tool["labels"][torch.isin(no_tool["labels"], torch.tensor(tool_ids))] = IGNORE
    assert distill(model, no_tool, vocab).item() == pytest.approx(target_loss(model, no_tool, vocab).item(), abs=1e-5)


def test_the_tools_an_addition_learns_anew_are_not_kept_in_place(tmp_path):
    """Replaced documentation and promoted distractor names are the addition's to learn: not in the KL's old tools."""
    (tmp_path / "add_tools_report.json").write_text(json.dumps({"tools_replaced": ["<<b>>"],
                                                                "distractors_promoted": ["<<c>>"]}))
    tokens = ["<<a>>", "<<b>>", "<<c>>", "<<d>>", "<<new>>"]
    assert old_tool_ids(str(tmp_path), tokens, [10, 11, 12, 13, 14], 4) == [10, 13]


def old_tool_drift(parent_dir, stage_dir, data_dir):
    """Mean KL(parent || stage) over the parent's tools, from the parent's retrieval queries."""
    examples = read(os.path.join(data_dir, "retrieval_training.json"))
    prompts = [ex["messages"][:-1] for ex in examples]
    old = read(os.path.join(parent_dir, "tool_tokens.json"))
    scores = []
    for stage in (parent_dir, stage_dir):
        tokenizer, model, _ = models.load_stage(stage)
        logprobs = decoding.next_token_logprobs(model.eval(), tokenizer, prompts)
        scores.append(logprobs[:, tokenizer.convert_tokens_to_ids(old)])
    return kl_old_tools(*scores).item() / len(prompts)


def test_distillation_keeps_the_old_tools_where_they_were(parent, tmp_path):  # noqa: F811
    """The same addition (train all: the LoRA moves) with and without distillation: with it, the parent's
    distribution over its own tools moves less on its own queries, and the new tools are still learned."""
    runs = {}
    for name, weight in (("plain", 0.0), ("distilled", 5.0)):
        out = tmp_path / name
        add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out,
            *[a for s in FAST + ["add_tools.train=all", f"add_tools.distill_weight={weight}"] for a in ("--set", s)])
        runs[name] = old_tool_drift(parent["dir"], str(out), parent["data"])
        metrics = read(os.path.join(out, "metrics.json"))
        assert metrics["loss_last"] < metrics["loss_first"]
    assert runs["plain"] > 0 and runs["distilled"] < 0.7 * runs["plain"], runs   # seen: 2.83 and 0.03
    out = str(tmp_path / "distilled")
    assert read(os.path.join(out, "config.json"))["add_tools"]["distill_weight"] == 5.0
    ranks = memorization_ranks(out, f"{out}.data", read(os.path.join(out, "stage.json"))["tools_added"])
    assert (ranks == 0).float().mean() >= 0.9 and ranks.max() <= 2, ranks.tolist()   # as without distillation


def test_distillation_needs_a_moving_lora(parent, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="add_tools.distill_weight=1.0 with add_tools.train=new_rows"):
        load_config(TINY, ["add_tools.distill_weight=1", "add_tools.train=new_rows", "train.weight_decay=0"])
    assert "add_tools.distill_weight" in error_of("--model", parent["dir"], "--api-catalog", parent["a"], "--out",
                                                  tmp_path / "bad", "--set", "add_tools.distill_weight=-1")
    assert json.loads(json.dumps(load_config(TINY, []).to_dict()))["add_tools"]["distill_weight"] == 0.0
