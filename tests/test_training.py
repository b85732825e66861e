"""The training loop on the tiny model: masks, tool rows, what trains, reload, chaining, accumulation, logs, resume."""

import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, run_stage
from toolgen import models
from toolgen.collate import IGNORE, LeftPadCollator, tokenize_messages
from toolgen.config import load_config
from toolgen.tokens import token_words
from toolgen.train import StageError


def tiny_with_tokens(data_dir, tied=True):
    with open(os.path.join(data_dir, "tool_tokens.json")) as f:
        tokens = json.load(f)["tokens"]
    cfg = load_config(TINY, [f"model.tie_word_embeddings={str(tied).lower()}"]).model
    return tokens, *models.load_base(cfg, tokens)


def test_collator_masks_exactly_the_target_tokens(sample_data):
    tokens, tokenizer, _, _ = tiny_with_tokens(sample_data)
    with open(os.path.join(sample_data, "agent_tuning.json")) as f:
        example = json.load(f)[0]
    enc = tokenize_messages(tokenizer, example["messages"])
    # Expected, token by token: each loss message's content, then the end-of-turn marker, carries a label; nothing else.
    expected = []
    for m in example["messages"]:
        header = tokenizer(f"<|{m['role']}|>\n", add_special_tokens=False)["input_ids"]
        body = tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] + \
            tokenizer("\n", add_special_tokens=False)["input_ids"]
        expected += [(i, IGNORE) for i in header] + [(i, i if m["loss"] else IGNORE) for i in body]
    assert list(zip(enc["input_ids"], enc["labels"])) == expected
    tool_positions = [i for i, t in enumerate(enc["input_ids"]) if tokenizer.convert_ids_to_tokens(t) in tokens]
    actions = [m for m in example["messages"] if m["role"] == "assistant" and m["content"] in tokens]
    labeled = [i for i in tool_positions if enc["labels"][i] == enc["input_ids"][i]]
    assert actions and len(labeled) == len(actions)   # (the system prompt's mention of <<Finish>> carries no loss)


def test_left_pad_collator_and_positions():
    batch = LeftPadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]},
                                             {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_truncation_keeps_the_target(sample_data):
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    messages = [{"role": "user", "content": "word " * 300, "loss": False}, {"role": "assistant", "content": "<<Finish>>", "loss": True}]
    enc = tokenize_messages(tokenizer, messages, max_length=32)
    assert len(enc["input_ids"]) == 32 and any(l != IGNORE for l in enc["labels"])


def test_what_max_length_cuts_is_counted_and_said(sample_data, tmp_path, capsys):
    """A two-turn example longer than max_length keeps its start: its second answer's targets are cut, counted by
    stage_dataset and said by the loop; an example that fits cuts nothing."""
    from toolgen.collate import stage_dataset
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    long = [{"role": "user", "content": "word " * 10, "loss": False},
            {"role": "assistant", "content": "first answer", "loss": True},
            {"role": "user", "content": "word " * 60, "loss": False},
            {"role": "assistant", "content": "second answer here", "loss": True}]
    short = long[:2]
    (tmp_path / "stage.json").write_text(json.dumps([{"messages": long}, {"messages": short}]))
    full = tokenize_messages(tokenizer, long)
    first_end = len(tokenize_messages(tokenizer, short)["input_ids"])
    n_targets = lambda labels: sum(l != IGNORE for l in labels[1:])  # noqa: E731
    second = n_targets(full["labels"]) - n_targets(full["labels"][:first_end])   # the second answer's targets
    assert second > 0 and len(full["input_ids"]) > first_end + 10
    dataset, cut = stage_dataset(tokenizer, str(tmp_path / "stage.json"), first_end + 5)
    assert dataset.column_names == ["input_ids", "labels"]
    assert cut == {"examples": 2, "examples_cut": 1, "target_tokens": n_targets(full["labels"]) + n_targets(
        tokenize_messages(tokenizer, short)["labels"]), "target_tokens_cut": second, "examples_fitted": 0}
    _, cut = stage_dataset(tokenizer, str(tmp_path / "stage.json"), len(full["input_ids"]))
    assert cut["examples_cut"] == cut["target_tokens_cut"] == 0
    data = tmp_path / "data"   # the two examples as a memorization file (any stage file would do)
    data.mkdir()
    (data / "tool_tokens.json").write_text(open(os.path.join(sample_data, "tool_tokens.json")).read())
    (data / "tool_memorization.json").write_text(json.dumps([{"messages": long}, {"messages": short}] * 4))
    run_stage("memorization", tmp_path / "run", data, f"stages.memorization.max_length={first_end + 5}",
              "stages.memorization.max_steps=1")
    said = capsys.readouterr().out
    assert f"4 of 8 examples of {data / 'tool_memorization.json'} are longer than stages.memorization.max_length=" in said
    assert f"{4 * second / (4 * cut['target_tokens']):.1%} of the target tokens are cut off" in said


@pytest.mark.parametrize("file", ["tool_memorization.json", "retrieval_training.json", "agent_tuning.json"])
def test_stage_files_tokenize_in_batches_as_segment_by_segment(sample_data, tmp_path, file):
    """stage_dataset encodes a batch's segments in one tokenizer call: the ids and loss masks are those of one call
    per segment, across batches of 256 conversations, cut at max_length the same way (a max_length that cuts some of
    the agent trajectories)."""
    from toolgen.collate import _segments, _truncated, stage_dataset
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    rows = json.load(open(os.path.join(sample_data, file)))
    rows = (rows * (600 // len(rows) + 1))[:600]   # past two batch boundaries
    path = tmp_path / file
    path.write_text(json.dumps(rows))
    dataset, cut = stage_dataset(tokenizer, str(path), 160)
    expected = []
    for r in rows:
        ids, labels = [], []
        for text, loss in _segments(tokenizer, r["messages"]):
            seg = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids, labels = ids + seg, labels + (seg if loss else [IGNORE] * len(seg))
        expected.append(_truncated(ids, labels, 160))
    assert dataset["input_ids"] == [e["input_ids"] for e in expected]
    assert dataset["labels"] == [e["labels"] for e in expected]
    assert cut["examples"] == 600
    if file == "agent_tuning.json":
        assert cut["examples_cut"] > 0


def test_tokenized_stage_files_are_made_again_when_the_code_changes(sample_data, tmp_path, monkeypatch):
    """datasets caches a tokenized stage file by the map's function, not by the collate code it calls: the cache key
    carries that code's hash, so a changed layout tokenizes again instead of reusing the old ids."""
    from toolgen import collate
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    path = tmp_path / "stage.json"
    path.write_text(open(os.path.join(sample_data, "retrieval_training.json")).read())
    before, _ = collate.stage_dataset(tokenizer, str(path), 160)
    again, _ = collate.stage_dataset(tokenizer, str(path), 160)
    assert again.cache_files == before.cache_files   # unchanged code: the cached file is read
    monkeypatch.setattr(collate, "_segments", lambda tok, messages, owners=None: [(messages[0]["content"], True)])
    monkeypatch.setattr(collate, "CODE", "another version of collate.py")
    changed, _ = collate.stage_dataset(tokenizer, str(path), 160)
    assert changed["input_ids"] != before["input_ids"] and changed.cache_files != before.cache_files


@pytest.mark.parametrize("tied", [True, False])
def test_tool_rows_start_at_the_mean_of_their_words(sample_data, tied):
    tokens, tokenizer, model, tool_ids = tiny_with_tokens(sample_data, tied)
    assert models.is_tied(model) == tied
    base = models.load_tokenizer(models.tiny_folder(tied))
    tables = [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight])
    assert model.get_input_embeddings().weight.shape[0] % 64 == 0 and len(tokenizer) == len(base) + len(tokens)
    for table in tables:
        for token, i in list(zip(tokens, tool_ids))[:10]:
            words = base(token_words(token), add_special_tokens=False)["input_ids"]
            torch.testing.assert_close(table[i], table[words].mean(0))
        assert torch.all(table[len(tokenizer):] == 0)   # padding rows


def test_stages_chain_loss_falls_and_only_adapter_and_tool_rows_train(trained):
    for stage, history in trained["histories"].items():
        assert history[-1] < history[0], (stage, history)
    out = trained["output_dir"]
    for folder in ("tool_memorization", "retrieval_training", "agent_tuning"):
        stage = json.load(open(os.path.join(out, folder, "stage.json")))
        assert stage["steps"] > 0 and os.path.exists(os.path.join(out, folder, "tokenizer", "tokenizer_config.json"))
        weights = load_file(os.path.join(out, folder, "adapter", "adapter_model.safetensors"))
        assert weights and all("lora_" in k or "trainable_tokens" in k for k in weights), list(weights)
    assert json.load(open(os.path.join(out, "retrieval_training", "stage.json")))["parent_stage"] == "memorization"
    # the clock of every update (benchmarks/throughput.py reads it): rising end times, the non-pad tokens of the data
    metrics = json.load(open(os.path.join(out, "tool_memorization", "metrics.json")))
    ends, tokens = metrics["clock"]["update_end_s"], metrics["clock"]["tokens"]
    assert len(ends) == len(tokens) == metrics["steps"] and ends == sorted(ends) and min(tokens) > 0
    assert metrics["tokens_per_s"] == pytest.approx(sum(tokens) / metrics["seconds"])
    # Only tool rows differ from the base: the adapter's rows are exactly the tool ids, all moved from their init.
    tokens, _, base, tool_ids = tiny_with_tokens(trained["data_dir"])
    delta = [v for k, v in load_file(os.path.join(out, "agent_tuning", "adapter", "adapter_model.safetensors")).items()
             if "trainable_tokens" in k][0]
    assert delta.shape[0] == len(tool_ids)
    moved = (delta - base.get_input_embeddings().weight[tool_ids]).abs().amax(-1)
    assert bool((moved > 0).all())


@pytest.mark.parametrize("tied", [True, False])
def test_saved_stage_reloads_to_identical_logits(tmp_path, sample_data, tied):
    model, _ = run_stage("memorization", tmp_path, sample_data, "stages.memorization.max_steps=3",
                         f"model.tie_word_embeddings={str(tied).lower()}")
    tokenizer, reloaded, _ = models.load_stage(os.path.join(tmp_path, "tool_memorization"))
    batch = LeftPadCollator(tokenizer.pad_token_id)([tokenize_messages(tokenizer, [
        {"role": "user", "content": "What is the weather like right now in Lisbon?"},
        {"role": "assistant", "content": "<<SkyCast&&current weather>>", "loss": True}])])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, reloaded(**inputs).logits, rtol=0, atol=0)


def test_stage_refuses_to_start_without_its_parent(tmp_path, sample_data):
    with pytest.raises(StageError, match="run stage 'memorization' first"):
        run_stage("retrieval", tmp_path, sample_data)
    with pytest.raises(StageError, match="tool_tokens.json is missing: prepare the data first"):
        run_stage("memorization", tmp_path, tmp_path / "no-data")


def test_loss_does_not_depend_on_the_accumulation_split(tmp_path, sample_data):
    """One update over the same 8 examples, as 1 x 8 or 4 x 2: plain SGD makes the step show the gradient itself."""
    common = ["train.optimizer=sgd", "train.max_grad_norm=1000", "stages.memorization.max_steps=1",
              "stages.memorization.learning_rate=1.0"]
    _, h1 = run_stage("memorization", tmp_path / "a", sample_data, *common,
                      "stages.memorization.per_device_batch_size=8", "stages.memorization.gradient_accumulation_steps=1")
    _, h4 = run_stage("memorization", tmp_path / "b", sample_data, *common,
                      "stages.memorization.per_device_batch_size=2", "stages.memorization.gradient_accumulation_steps=4")
    assert h1[0] == pytest.approx(h4[0], rel=1e-5)
    a = load_file(os.path.join(tmp_path, "a", "tool_memorization", "adapter", "adapter_model.safetensors"))
    b = load_file(os.path.join(tmp_path, "b", "tool_memorization", "adapter", "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)   # the step really moved LoRA


def test_tensorboard_holds_the_logged_scalars(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for folder, stage in (("tool_memorization", "memorization"), ("agent_tuning", "agent")):
        events = glob.glob(os.path.join(trained["output_dir"], "runs", "*", folder, "events.out.tfevents.*"))
        assert len(events) == 1
        acc = EventAccumulator(events[0])
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {f"{stage}/{k}" for k in ("loss", "lr", "grad_norm", "tokens_per_s_per_device")} <= tags
        logged = [e.value for e in acc.Scalars(f"{stage}/loss")]
        assert logged == pytest.approx(trained["histories"][stage][:len(logged)], rel=1e-6)


def test_target_loss_equals_the_plain_full_logits_loss(sample_data):
    """The fast path (left padding + position ids + LM head at target positions only) gives the same loss and the same
    gradients as the plain one (right padding, full logits, cross-entropy over every position)."""
    from toolgen.loss import target_loss
    _, tokenizer, base, tool_ids = tiny_with_tokens(sample_data)
    model = models.lora_model(base, load_config(TINY).lora, tool_ids)
    vocab = len(tokenizer)
    with open(os.path.join(sample_data, "agent_tuning.json")) as f:
        agent = json.load(f)[:2]
    with open(os.path.join(sample_data, "retrieval_training.json")) as f:
        retrieval = json.load(f)[:3]
    examples = [tokenize_messages(tokenizer, ex["messages"], 256) for ex in agent + retrieval]
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    for p in params:   # LoRA B starts at zero: move it so that every parameter gets a gradient
        p.data.add_(0.01 * torch.randn_like(p))
    fast = target_loss(model, LeftPadCollator(tokenizer.pad_token_id)(examples), vocab)
    fast_grads = torch.autograd.grad(fast, params)
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.tensor([e["input_ids"] + [tokenizer.pad_token_id] * (longest - len(e["input_ids"])) for e in examples])
    labels = torch.tensor([e["labels"] + [IGNORE] * (longest - len(e["labels"])) for e in examples])
    mask = torch.tensor([[1] * len(e["input_ids"]) + [0] * (longest - len(e["input_ids"])) for e in examples])
    logits = model(input_ids=ids, attention_mask=mask).logits[..., :vocab]
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1),
                                              ignore_index=IGNORE, reduction="sum")
    plain_grads = torch.autograd.grad(plain, params)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-4)
    for a, b in zip(fast_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # and the padding rows of the vocabulary are never predicted: give them logits that would win every softmax;
    # the loss and the decoded distribution do not move
    table = model.get_input_embeddings().weight
    assert table.shape[0] > vocab
    with torch.no_grad():
        table[vocab:] = 1000.0 * torch.ones_like(table[vocab:])
        batch = LeftPadCollator(tokenizer.pad_token_id)(examples)
        torch.testing.assert_close(target_loss(model, batch, vocab), fast.detach(), rtol=1e-5, atol=1e-4)
        from toolgen import decoding
        logprobs = decoding.next_token_logprobs(model, tokenizer, [agent[0]["messages"][:2]])
        assert logprobs.shape[-1] == vocab and torch.allclose(logprobs.exp().sum(-1), torch.ones(1))


def test_length_grouped_batches_pad_less_and_change_every_epoch():
    import random
    from toolgen.collate import LengthGroupedSampler
    rng = random.Random(0)
    lengths = [rng.randint(5, 300) for _ in range(512)]
    sampler = LengthGroupedSampler(lengths, window=64, seed=3)

    def padded(order):   # tokens a batch of 8 occupies after padding to its longest
        return sum(8 * max(lengths[i] for i in order[s:s + 8]) for s in range(0, len(order), 8))
    grouped = list(sampler)
    assert sorted(grouped) == list(range(512))
    assert padded(grouped) < 0.8 * padded(list(range(512)))
    sampler.set_epoch(1)
    assert list(sampler) != grouped and sorted(sampler) == list(range(512))
    sampler.set_epoch(0)
    assert list(sampler) == grouped
