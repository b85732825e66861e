"""The speed paths of the loop give the plain path's numbers: row-sparse tool rows, packed batches, torch.compile."""

import gc
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, run_stage
from toolgen import models, train
from toolgen.collate import IGNORE, LeftPadCollator, PackedCollator, tokenize_messages
from toolgen.config import ConfigError, load_config
from toolgen.tool_rows import sparse_tool_rows
from toolgen.loss import target_loss


def lora_tiny(data_dir, *overrides):
    with open(os.path.join(data_dir, "tool_tokens.json")) as f:
        tokens = json.load(f)["tokens"]
    cfg = load_config(TINY, list(overrides))
    tokenizer, base, tool_ids = models.load_base(cfg.model, tokens)
    model = models.lora_model(base, cfg.lora, tool_ids)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(0)
    for p in params:   # LoRA B and the tool deltas start at rest: move them so every parameter gets a gradient
        p.data.add_(0.01 * torch.randn_like(p))
    return tokenizer, model, tool_ids, params


def stage_examples(tokenizer, data_dir):
    with open(os.path.join(data_dir, "agent_tuning.json")) as f:
        agent = json.load(f)[:2]
    with open(os.path.join(data_dir, "retrieval_training.json")) as f:
        retrieval = json.load(f)[:4]
    return [tokenize_messages(tokenizer, ex["messages"], 256) for ex in agent + retrieval]


def loss_and_grads(model, batch, vocab, params):
    loss = target_loss(model, batch, vocab)
    return loss, torch.autograd.grad(loss, params)


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-4)
    for x, y in zip(a[1], b[1]):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tied", [True, False])
def test_sparse_tool_rows_give_peft_loss_and_gradients(sample_data, tied):
    tokenizer, model, tool_ids, params = lora_tiny(sample_data, f"model.tie_word_embeddings={str(tied).lower()}",
                                                   "lora.dropout=0")
    batch = LeftPadCollator(tokenizer.pad_token_id)(stage_examples(tokenizer, sample_data))
    batch["input_ids"][0, -3] = tool_ids[5]   # a tool token in the input too: the embedding rows must train as well
    plain = loss_and_grads(model, batch, len(tokenizer), params)
    assert sparse_tool_rows(model) == 2       # the embedding and the LM head (tied: sharing one delta)
    sparse = loss_and_grads(model, batch, len(tokenizer), params)
    assert_same(sparse, plain)
    delta_grads = [g for p, g in zip(params, sparse[1]) if p.shape[0] == len(tool_ids)]
    assert delta_grads and all(g.abs().sum() > 0 for g in delta_grads)


@pytest.mark.parametrize("attn", ["sdpa", "eager", "varlen"])
def test_packed_batch_gives_the_padded_batch_loss_and_gradients(sample_data, attn):
    """varlen: attention within each example of the row (toolgen/attention.py; on CPU one causal sdpa per example)."""
    tokenizer, model, _, params = lora_tiny(sample_data, f"model.attn_implementation={attn}", "lora.dropout=0",
                                            "train.packing=true")
    assert model.config._attn_implementation == attn
    examples = stage_examples(tokenizer, sample_data)
    padded = LeftPadCollator(tokenizer.pad_token_id)(examples)
    packed = PackedCollator(tokenizer.pad_token_id, pad_to_multiple_of=64, varlen=attn == "varlen")(examples)
    assert packed["input_ids"].shape[0] == 1 and packed["input_ids"].shape[1] % 64 == 0
    assert int(packed["num_tokens"]) == int(padded["attention_mask"].sum())
    assert int((packed["labels"] != IGNORE).sum()) == int((padded["labels"] != IGNORE).sum())
    packed_result = loss_and_grads(model, packed, len(tokenizer), params)
    if attn == "varlen":   # it takes packed rows only: the padded batch is the reference, computed with sdpa
        model.set_attn_implementation("sdpa")
    assert_same(packed_result, loss_and_grads(model, padded, len(tokenizer), params))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_document_mask_gives_the_padding_mask_loss_and_gradients(sample_data, attn):
    """Training batches carry no padding mask: padding positions attend to themselves (no fully masked row, whose
    NaN on CUDA kernels reached the weight gradients), and the real tokens get the same numbers."""
    tokenizer, model, _, params = lora_tiny(sample_data, f"model.attn_implementation={attn}", "lora.dropout=0")
    examples = stage_examples(tokenizer, sample_data)
    masked = LeftPadCollator(tokenizer.pad_token_id)(examples)
    documents = LeftPadCollator(tokenizer.pad_token_id, document_mask=True)(examples)
    assert "attention_mask" not in documents and int(documents["num_tokens"]) == int(masked["attention_mask"].sum())
    assert bool((masked["attention_mask"] == 0).any())   # some rows are padded: the case that matters
    assert_same(loss_and_grads(model, documents, len(tokenizer), params),
                loss_and_grads(model, masked, len(tokenizer), params))


def test_packed_collator_keeps_examples_apart():
    examples = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8, 9], "labels": [8, 9]}]
    b = PackedCollator(pad_token_id=0, pad_to_multiple_of=4)(examples)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1, 2]]
    # the first token of an example is never a target (it would be predicted from the previous example)
    assert b["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9, IGNORE, IGNORE, IGNORE]]
    assert int(b["num_tokens"]) == 5
    assert "cu_seq_lens_q" not in b
    v = PackedCollator(pad_token_id=0, pad_to_multiple_of=4, varlen=True)(examples)
    # where each example starts, the padding tail (3 tokens) an example of its own; the longest is 3 tokens
    assert v["cu_seq_lens_q"].tolist() == v["cu_seq_lens_k"].tolist() == [0, 3, 5, 8]
    assert v["cu_seq_lens_q"].dtype == torch.int32 and v["max_length_q"] == v["max_length_k"] == 3


def test_varlen_needs_packing_and_refuses_what_it_would_not_compute():
    from toolgen import attention
    with pytest.raises(ConfigError, match="varlen .* needs train.packing=true"):
        load_config(TINY, ["model.attn_implementation=varlen"])
    q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
    row = attention.boundaries([4, 2])
    out, _ = attention.varlen_attention(None, q, k, k, None, **row)
    assert out.shape == (1, 6, 4, 8)
    with pytest.raises(ValueError, match="needs train.packing"):   # a padded batch: no example boundaries
        attention.varlen_attention(None, q, k, k, None)
    for extra in ({"sliding_window": 4}, {"softcap": 30.0}, {"dropout": 0.1}):   # plain causal attention would be wrong
        with pytest.raises(ValueError, match="computes plain causal attention"):
            attention.varlen_attention(None, q, k, k, None, **row, **extra)


def test_compile_settings_reach_the_accelerator():
    """train.compile_mode and train.compile_regional are what accelerate compiles with; a mode torch does not know
    stops at load, naming the key, and a CUDA-graph mode (it crashed the loop on an H200) says why."""
    from toolgen.distributed import dynamo_plugin
    sets = ["train.compile=true", "train.compile_mode=max-autotune-no-cudagraphs", "train.compile_regional=false"]
    plugin = dynamo_plugin(load_config(TINY, sets).train)
    assert (plugin.mode, plugin.use_regional_compilation, plugin.dynamic) == ("max-autotune-no-cudagraphs", False, True)
    shipped = dynamo_plugin(load_config(TINY, ["train.compile=true"]).train)
    assert (shipped.mode, shipped.use_regional_compilation) == ("default", True)
    assert dynamo_plugin(load_config(TINY, []).train) is None
    with pytest.raises(ConfigError, match="train.compile_mode='fast'"):
        load_config(TINY, ["train.compile_mode=fast"])
    for mode in ("reduce-overhead", "max-autotune"):
        with pytest.raises(ConfigError, match=f"train.compile_mode='{mode}'.*CUDA-graph mode"):
            load_config(TINY, [f"train.compile_mode={mode}"])


def test_packed_and_compiled_stages_train_like_the_plain_one(tmp_path, sample_data):
    """Whole stage runs: the plain path (peft's dense tool rows, padded batches), packing, torch.compile (each
    layer, or the whole model as one graph) and the chunked LM-head loss give the same loss curve and save the same
    adapter (with the same tensor names)."""
    steps = ["stages.memorization.max_steps=12", "lora.dropout=0"]
    runs = {"plain": ["train.sparse_tool_rows=false"], "packed": ["train.packing=true"],
            "compiled": ["train.packing=true", "train.compile=true"],
            "compiled_whole": ["train.packing=true", "train.compile=true", "train.compile_regional=false"],
            "chunked": ["train.packing=true", "train.compile=true", "train.chunked_loss=true"],
            "varlen": ["train.packing=true", "model.attn_implementation=varlen"]}
    out = {}
    for name, overrides in runs.items():
        _, out[name] = run_stage("memorization", tmp_path / name, sample_data, *steps, *overrides)
    assert out["plain"][-1] < out["plain"][0]
    # a varlen stage trains with varlen and serves (left-padded batches, generation) on sdpa
    varlen_stage = str(tmp_path / "varlen" / "tool_memorization")
    assert models.load_stage(varlen_stage, trainable=True)[1].config._attn_implementation == "varlen"
    assert models.load_stage(varlen_stage)[1].config._attn_implementation == "sdpa"
    fast = ("packed", "compiled", "compiled_whole", "chunked", "varlen")
    for name in fast:
        assert out[name] == pytest.approx(out["plain"], rel=1e-4, abs=1e-4)
    adapters = {n: load_file(str(tmp_path / n / "tool_memorization" / "adapter" / "adapter_model.safetensors"))
                for n in runs}
    for name in fast:
        assert sorted(adapters[name]) == sorted(adapters["plain"])
        for k, v in adapters["plain"].items():
            torch.testing.assert_close(adapters[name][k], v, rtol=1e-3, atol=1e-5)


def test_stage_gradient_checkpointing_recomputes_without_changing_the_numbers(tmp_path, sample_data):
    """stages.<stage>.gradient_checkpointing turns checkpointing on for that stage only, with the same loss curve."""
    steps = ["stages.memorization.max_steps=6", "lora.dropout=0"]
    plain_model, plain = run_stage("memorization", tmp_path / "plain", sample_data, *steps)
    ckpt_model, ckpt = run_stage("memorization", tmp_path / "ckpt", sample_data, *steps,
                                 "stages.memorization.gradient_checkpointing=true")
    assert ckpt_model.base_model.model.is_gradient_checkpointing
    assert not plain_model.base_model.model.is_gradient_checkpointing
    assert ckpt == pytest.approx(plain, rel=1e-5, abs=1e-6)


def test_merged_stage_gives_the_same_logits_without_running_the_adapter(trained):
    """merge_for_inference: the agent stage's logits unchanged (float32 tiny model), no LoRA matmul and no copy of
    the tool table in a forward any more, and disable_adapter() still gives the base's logits."""
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    stage = os.path.join(trained["output_dir"], "agent_tuning")
    tokenizer, plain, tool_ids = models.load_stage(stage)
    _, merged, _ = models.load_stage(stage)
    ids = torch.tensor([[1, 5, 9, tool_ids[0], tool_ids[-1], 7]])
    with torch.no_grad():
        want = plain(input_ids=ids).logits
        with plain.disable_adapter():
            want_base = plain(input_ids=ids).logits
        assert not torch.allclose(want, want_base, atol=1e-4)   # the adapter changes the numbers: the check can fail
        assert models.merge_for_inference(merged)
        calls = []
        for m in merged.modules():
            if m.__class__.__name__ == "Linear" and hasattr(m, "lora_A"):
                for a in m.lora_A.values():
                    a.register_forward_hook(lambda *_: calls.append("lora"))
            if isinstance(m, TrainableTokensLayer):
                m.get_merged_weights = lambda *_: calls.append("table copy")
        got = merged(input_ids=ids).logits
        assert calls == []
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        with merged.disable_adapter():
            torch.testing.assert_close(merged(input_ids=ids).logits, want_base, atol=1e-5, rtol=1e-5)


def test_agent_decode_benchmark_runs_on_the_tiny_stage(trained, tmp_path):
    """benchmarks/agent_decode.py on CPU: both variants timed on the loop's own first arguments turn, their figures
    written; the merged model's answers are the adapter's (float32: no rounding to part them)."""
    import shutil
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import agent_decode
    data = tmp_path / "data"
    shutil.copytree(trained["data_dir"], data)
    token = "<<SkyCast&&current weather>>"
    assert token in json.load(open(data / "tool_tokens.json"))["tokens"]
    records = [{"source": "weather", "uid": f"w{i}", "request": text, "answer": None, "origin": "hand-made",
                "calls": [{"name": "current weather", "token": token, "arguments": {"city": city}}]}
               for i, (text, city) in enumerate([("How warm is it in Lisbon?", "Lisbon"), ("Wind in Oslo?", "Oslo")])]
    (data / "agent_e2e_test.json").write_text(json.dumps(records))
    out = tmp_path / "decode.json"
    agent_decode.main(["--model", os.path.join(trained["output_dir"], "agent_tuning"), "--data", str(data),
                       "--source", "weather", "--rows", "2", "--repeats", "2", "--max-new-tokens", "8",
                       "--out", str(out)])
    result = json.load(open(out))
    assert result["rows"] == 2 and set(result["variants"]) == {"adapter", "merged"}
    for v in result["variants"].values():
        assert len(v["seconds"]) == 2 and v["median_s"] > 0 and v["longest_tokens"] >= 1
    assert result["variants"]["merged"]["same_answers"] == 1.0


def test_loader_workers_and_the_gc_schedule_train_like_the_main_process(tmp_path, sample_data):
    """train.num_workers collates in worker processes and train.gc_every moves Python's garbage collector to fixed
    updates: the same batches, so the same loss curve, and the collector is Python's own again after the stage."""
    steps = ["stages.memorization.max_steps=6", "lora.dropout=0", "train.packing=true", "train.group_by_length=true"]
    _, plain = run_stage("memorization", tmp_path / "plain", sample_data, *steps, "train.num_workers=0",
                         "train.gc_every=0")
    assert gc.isenabled()
    _, workers = run_stage("memorization", tmp_path / "workers", sample_data, *steps, "train.num_workers=2",
                           "train.gc_every=2")
    assert gc.isenabled()
    assert workers == pytest.approx(plain, rel=1e-6, abs=1e-7)


def test_the_gc_schedule_collects_on_its_updates_and_gives_the_collector_back(monkeypatch):
    calls = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: calls.append(generation))
    with pytest.raises(RuntimeError):
        with train.scheduled_gc(3) as collect:
            assert not gc.isenabled() and calls == [1]   # one collection as the schedule starts
            for step in range(1, 8):
                collect(step)
            assert calls == [1, 1, 1]                    # steps 3 and 6
            raise RuntimeError("a failing stage")
    assert gc.isenabled()
    with train.scheduled_gc(0) as collect:
        assert gc.isenabled()
        collect(3)
    assert calls == [1, 1, 1]
