"""LoRA dropout drawn again in the backward pass (toolgen/lora_dropout.py): the hash, the mask's statistics, the
gradients, what the backward pass keeps, and a stage trained with it."""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import run_stage
from test_fast_paths import lora_tiny, stage_examples
from toolgen import lora_dropout, models
from toolgen.collate import LeftPadCollator
from toolgen.lora_dropout import DroppedLinear, keep_mask
from toolgen.loss import target_loss


def fmix32(h):   # MurmurHash3's finalizer in Python integers, as published
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def test_the_hash_is_murmur3s_finalizer_in_int64_without_overflow():
    values = [0, 1, 2**31, 2**32 - 1, 123456789, 0xDEADBEEF]
    assert fmix32(1) == 0x514E28B7   # the published finalizer's value for 1
    assert lora_dropout._fmix32(torch.tensor(values)).tolist() == [fmix32(v) for v in values]


def test_the_mask_keeps_one_minus_p_repeats_for_its_seed_and_differs_between_seeds():
    like = torch.empty(1000, 1000)
    a, b = (keep_mask(torch.tensor(s), like, 0.05) for s in (7, 8))
    assert a.float().mean().item() == pytest.approx(0.95, abs=0.0015)
    assert torch.equal(a, keep_mask(torch.tensor(7), like, 0.05))
    # two independent masks agree where both keep or both drop: 0.95^2 + 0.05^2 = 0.905
    assert (a == b).float().mean().item() == pytest.approx(0.905, abs=0.002)
    # neighbouring elements are not correlated (the index is hashed, not added to the seed)
    assert (a[:, 1:] == a[:, :-1]).float().mean().item() == pytest.approx(0.905, abs=0.002)


def test_dropped_linear_is_dropout_then_the_product_with_its_gradients():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    seed, p = torch.tensor(12345), 0.3
    mask = keep_mask(seed, x, p).double()
    assert 0 < mask.mean() < 1
    out = DroppedLinear.apply(x, w, seed, p, torch.float64)
    torch.testing.assert_close(out, F.linear(x * mask / (1 - p), w))
    assert torch.autograd.gradcheck(lambda x, w: DroppedLinear.apply(x, w, seed, p, torch.float64), (x, w))


def kept_bytes(model, batch, vocab):
    """Bytes the backward pass keeps (each storage once: q, k and v may keep the same x) -> (bytes, loss)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = target_loss(model, batch, vocab)
    return sum(storages.values()), loss


def test_the_folded_dropout_keeps_less_for_the_backward_pass_and_leaves_eval_and_names_alone(sample_data):
    tokenizer, model, _, _ = lora_tiny(sample_data, "lora.dropout=0.1")   # LoRA B moved: dropout changes the loss
    batch = LeftPadCollator(tokenizer.pad_token_id)(stage_examples(tokenizer, sample_data))
    folded = copy.deepcopy(model)
    layers = sum(1 for m in model.modules() if isinstance(getattr(m, "lora_dropout", None), torch.nn.ModuleDict))
    assert lora_dropout.recompute(folded) == layers > 0
    assert folded.state_dict().keys() == model.state_dict().keys()   # the adapter saves as peft's
    model.train(), folded.train()
    peft_bytes, _ = kept_bytes(model, batch, len(tokenizer))
    folded_bytes, loss = kept_bytes(folded, batch, len(tokenizer))
    assert folded_bytes < 0.8 * peft_bytes
    loss.backward()
    assert all(p.grad is not None for n, p in folded.named_parameters() if "lora_A" in n)
    model.eval(), folded.eval()   # no dropout: the same numbers
    with torch.no_grad():
        vocab = len(tokenizer)
        torch.testing.assert_close(target_loss(folded, batch, vocab), target_loss(model, batch, vocab))


def test_a_compiled_stage_with_folded_dropout_learns_as_with_peft_dropout_and_its_adapter_reloads(tmp_path,
                                                                                                 sample_data):
    common = ["lora.dropout=0.1", "stages.memorization.max_steps=8"]
    model, history = run_stage("memorization", tmp_path, sample_data, *common, "train.compile=true",
                               "lora.recompute_dropout=true")
    assert any(isinstance(m, lora_dropout.RecomputedDropoutA) for m in model.modules())
    _, peft = run_stage("memorization", tmp_path / "peft", sample_data, *common)   # peft's dropout (uncompiled)
    # the same dropout rate, other masks: the curves start equal (no update yet) and fall alike (on this sample
    # 7.030 -> 6.825 folded, 6.829 with peft's dropout compiled)
    assert history[0] == pytest.approx(peft[0], rel=1e-4)
    assert history[-1] < 0.98 * history[0] and history[-1] == pytest.approx(peft[-1], rel=0.02)
    reloaded = models.load_stage(str(tmp_path / "tool_memorization"))[1]
    assert not any(isinstance(m, lora_dropout.RecomputedDropoutA) for m in reloaded.modules())
    trained = dict(model.named_parameters())
    for n, p in reloaded.named_parameters():
        if "lora_A" in n and n in trained:
            torch.testing.assert_close(p, trained[n].to(p.dtype))
