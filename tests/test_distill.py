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
from toolgen.distill import OldToolDistillation, TopLayers, kl_old_tools, kl_to_wider, old_tool_ids
from toolgen.loss import IGNORE, target_logits, target_loss


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


def test_the_wider_kl_by_hand():
    # teacher over old tools a, b: (1/4, 3/4); student over a, b and a new c with logits (0, ln 3, ln 4): its old
    # order is the teacher's, the new tool holds 4/8 of the mass: KL = 0 - log(1 - 1/2) = ln 2
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    wide = torch.log_softmax(torch.tensor([[0.0, math.log(3.0), math.log(4.0)]]), -1)[:, :2]
    assert kl_to_wider(teacher, wide).item() == pytest.approx(math.log(2.0))
    assert kl_to_wider(teacher, torch.log_softmax(teacher, -1)).item() == pytest.approx(0.0, abs=1e-7)


def test_distill_new_tools_holds_the_new_tools_down_at_old_targets(parent):  # noqa: F811
    """new_too: at an old tool's target the loss adds w * -log(1 - the new tools' mass) while the old order is the
    teacher's (at the start); only the new rows moving up raises it, which the old tools' KL alone cannot see; at a
    new tool's target the KL stays over the old tools."""
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    model.eval()
    n_old = len(tool_ids) - 3   # the parent's last 3 tools play the new ones
    rows = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    plain = OldToolDistillation([rows], tool_ids, tool_ids[:n_old], weight=2.0)
    new_too = OldToolDistillation([rows], tool_ids, tool_ids[:n_old], weight=2.0, new_too=True)
    batch, vocab = retrieval_batch(tokenizer, parent["data"], n=24), len(tokenizer)
    tools, old = torch.tensor(tool_ids), torch.tensor(tool_ids[:n_old])

    def held_down():   # 2 * sum over old-tool targets of -log(1 - new mass) = logsumexp(all) - logsumexp(old)
        logits, labels = target_logits(model, batch, vocab)
        at_old = logits[..., tools][torch.isin(labels, old)]
        return 2.0 * (torch.logsumexp(at_old, -1) - torch.logsumexp(at_old[:, :n_old], -1)).sum().item()
    ce = target_loss(model, batch, vocab).item()
    assert plain(model, batch, vocab).item() == pytest.approx(ce, abs=1e-5)
    assert new_too(model, batch, vocab).item() == pytest.approx(ce + held_down(), rel=1e-5)
    start = held_down()
    with torch.no_grad():
        rows[n_old:] += 3.0 * torch.randn_like(rows[n_old:])   # the "new" tools' scores move, the old ones' do not
    assert held_down() > start
    ce = target_loss(model, batch, vocab).item()
    assert plain(model, batch, vocab).item() == pytest.approx(ce, abs=1e-4)
    assert new_too(model, batch, vocab).item() == pytest.approx(ce + held_down(), rel=1e-5)
    # a batch whose only tool targets are the "new" tools: the old tools' KL alone, and they did not move
    labels = batch["labels"]
    new_only = {**batch, "labels": torch.where(torch.isin(labels, old), IGNORE, labels)}
    assert torch.isin(new_only["labels"], tools[n_old:]).any()
    assert new_too(model, new_only, vocab).item() == pytest.approx(target_loss(model, new_only, vocab).item(), abs=1e-4)
    with pytest.raises(ConfigError, match="add_tools.distill_new_tools=true needs add_tools.distill_weight > 0"):
        load_config(TINY, ["add_tools.distill_new_tools=true"])


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


def new_tool_share(parent_dir, stage_dir, data_dir):
    """Mean softmax mass the stage gives its new tools (over all its tools) on the parent's retrieval queries, whose
    targets are all old tools: how far the new tools climb where they do not belong."""
    prompts = [ex["messages"][:-1] for ex in read(os.path.join(data_dir, "retrieval_training.json"))]
    old = set(read(os.path.join(parent_dir, "tool_tokens.json")))
    tokens = read(os.path.join(stage_dir, "tool_tokens.json"))
    tokenizer, model, _ = models.load_stage(stage_dir)
    logprobs = decoding.next_token_logprobs(model.eval(), tokenizer, prompts)
    probs = torch.softmax(logprobs[:, tokenizer.convert_tokens_to_ids(tokens)], -1)
    return probs[:, [i for i, t in enumerate(tokens) if t not in old]].sum(-1).mean().item()


def test_distillation_keeps_the_old_tools_where_they_were(parent, tmp_path):  # noqa: F811
    """The same addition (train all: the LoRA moves) with and without distillation: with it, the parent's
    distribution over its own tools moves less on its own queries, and the new tools are still learned. With
    distill_new_tools the new tools also take less of the old queries' mass."""
    runs, shares = {}, {}
    for name, sets in (("plain", ["add_tools.distill_weight=0"]), ("distilled", ["add_tools.distill_weight=5"]),
                       ("guarded", ["add_tools.distill_weight=5", "add_tools.distill_new_tools=true"])):
        out = tmp_path / name
        add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out,
            *[a for s in FAST + ["add_tools.train=all"] + sets for a in ("--set", s)])
        runs[name] = old_tool_drift(parent["dir"], str(out), parent["data"])
        shares[name] = new_tool_share(parent["dir"], str(out), parent["data"])
        metrics = read(os.path.join(out, "metrics.json"))
        assert metrics["loss_last"] < metrics["loss_first"]
    assert runs["plain"] > 0 and runs["distilled"] < 0.7 * runs["plain"], runs   # seen: 2.83 and 0.03
    assert runs["guarded"] < 0.7 * runs["plain"], runs
    assert shares["guarded"] < 0.7 * shares["distilled"], shares   # seen: 0.207 and 0.065 (plain 0.167)
    for name in ("distilled", "guarded"):
        out = str(tmp_path / name)
        assert read(os.path.join(out, "config.json"))["add_tools"]["distill_weight"] == 5.0
        ranks = memorization_ranks(out, f"{out}.data", read(os.path.join(out, "stage.json"))["tools_added"])
        assert (ranks == 0).float().mean() >= 0.9 and ranks.max() <= 2, ranks.tolist()   # as without distillation


def test_distillation_needs_a_moving_lora(parent, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="add_tools.distill_weight=1.0 with add_tools.train=new_rows"):
        load_config(TINY, ["add_tools.distill_weight=1", "add_tools.train=new_rows", "train.weight_decay=0"])
    assert "add_tools.distill_weight" in error_of("--model", parent["dir"], "--api-catalog", parent["a"], "--out",
                                                  tmp_path / "bad", "--set", "add_tools.distill_weight=-1")
    assert json.loads(json.dumps(load_config(TINY, []).to_dict()))["add_tools"]["distill_weight"] == 0.0


def layer_of(name):
    return int(name.split(".layers.")[1].split(".")[0]) if ".layers." in name else None


def test_the_top_layers_teacher_is_the_whole_teacher_at_a_share_of_its_cost(parent):  # noqa: F811
    """add_tools.lora_layers=1 on the 2-layer model: only the last layer's LoRA trains, the first layer runs without
    gradient, and the teacher that reruns the last layer from the student's own input to it gives the same loss and
    gradients as the teacher that runs the whole model again, with the first layer run once instead of twice."""
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    n_old = len(tool_ids) - 3
    models.train_new_rows_only(model, n_old, keep_lora=True, lora_layers=1)
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {layer_of(n) for n in names} == {1, None} and any("lora_A" in n for n in names), names
    whole = OldToolDistillation(params, tool_ids, tool_ids[:n_old], weight=2.0)
    top = OldToolDistillation(params, tool_ids, tool_ids[:n_old], weight=2.0, top=TopLayers(model, 1))
    with torch.no_grad():
        for p in params:
            p.add_(2.0 * torch.randn_like(p))
    batch, vocab = retrieval_batch(tokenizer, parent["data"]), len(tokenizer)
    layers, _ = models.decoder_layers(model)
    calls = []
    layers[0].register_forward_hook(lambda *_: calls.append(1))
    model.train()
    losses, grads, runs = [], [], []
    for distill in (whole, top):
        calls.clear()
        loss = distill(model, batch, vocab)
        loss.backward()
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in params])
        runs.append(len(calls))
        model.zero_grad()
    assert losses[0] > target_loss(model, batch, vocab).item() + 0.01   # the KL is there
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))
    assert runs == [2, 1]   # the first layer: student and teacher, then the student alone
    out = model(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    assert not out.hidden_states[1].requires_grad and out.hidden_states[2].requires_grad


def test_lora_layers_leave_the_trunk_as_the_parent_computes_it(tmp_path):
    """The layers below the trained ones are frozen and without LoRA dropout (their output is then the parent's,
    which the teacher starts from); the trained layers keep theirs."""
    cfg = load_config(TINY, ["lora.dropout=0.1"])
    tokenizer, model, tool_ids = models.load_base(cfg.model, ["<<t&&a>>", "<<t&&b>>"])
    model = models.lora_model(model, cfg.lora, tool_ids)
    models.train_new_rows_only(model, 1, keep_lora=True, lora_layers=1)
    dropouts = {layer_of(n): type(m.lora_dropout["default"]).__name__ for n, m in model.named_modules()
                if hasattr(m, "lora_dropout")}
    assert dropouts == {0: "Identity", 1: "Dropout"}
    with pytest.raises(ValueError, match="add_tools.lora_layers=3: the model has 2 decoder layers"):
        models.train_new_rows_only(model, 1, keep_lora=True, lora_layers=3)


def test_an_addition_in_the_top_layer_keeps_the_rest_of_the_parent(parent, tmp_path):  # noqa: F811
    """toolgen-add-tools with new_rows_lora, lora_layers=1 and distillation: the first layer's LoRA and every old row
    saved bit for bit as the parent's, the last layer's LoRA moved, the loss falls and the new tools are learned.
    lora_layers beyond the model, or without new_rows_lora, stops before any training."""
    from safetensors.torch import load_file
    out = tmp_path / "top"
    sets = FAST + ["add_tools.train=new_rows_lora", "add_tools.lora_learning_rate=1e-3", "add_tools.lora_layers=1",
                   "add_tools.distill_weight=5"]
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out, *[a for s in sets for a in ("--set", s)])
    before = load_file(os.path.join(parent["dir"], "adapter", "adapter_model.safetensors"))
    after = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    n_old = len(read(os.path.join(parent["dir"], "tool_tokens.json")))
    for key, value in before.items():
        if "trainable_tokens_delta" in key:
            assert torch.equal(after[key][:n_old], value)
        elif "lora_" in key:
            assert torch.equal(after[key], value) == (layer_of(key) == 0), key
    metrics = read(os.path.join(out, "metrics.json"))
    assert metrics["loss_last"] < metrics["loss_first"]
    ranks = memorization_ranks(out, f"{out}.data", read(os.path.join(out, "stage.json"))["tools_added"])
    assert (ranks == 0).float().mean() >= 0.6 and ranks.float().mean() < 2, ranks.tolist()
    assert "add_tools.lora_layers=3: the model has 2 decoder layers" in error_of(
        "--model", parent["dir"], "--api-catalog", parent["a"], "--out", tmp_path / "deep",
        *[a for s in sets[:-2] + ["add_tools.lora_layers=3"] for a in ("--set", s)])
    assert not os.path.exists(tmp_path / "deep")
    with pytest.raises(ConfigError, match="add_tools.lora_layers=1 with add_tools.train=all"):
        load_config(TINY, ["add_tools.lora_layers=1"])
