"""The chunked LM-head loss (toolgen/head_loss.py) gives the plain loss's value and gradients, keeps no
[positions x vocabulary] tensor for the backward pass, and is what the loop runs when the model allows it."""

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from conftest import run_stage
from toolgen import head_loss
from toolgen.head_loss import HeadCrossEntropy


def test_one_position_by_hand():
    """Two vocabulary rows, the second a tool row: logits (1, 3) from h = (1, 0) and label 0 -> log(1 + e^2);
    d/dh = softmax - one-hot times the rows, d/drow = p_tool * h."""
    hidden = torch.tensor([[1.0, 0.0]], requires_grad=True)
    weight = torch.tensor([[1.0, 0.0], [9.0, 9.0]])          # row 1 is a tool: its table row is never read
    rows = torch.tensor([[3.0, 5.0]], requires_grad=True)
    loss = HeadCrossEntropy.apply(hidden, rows, weight, torch.tensor([1]), torch.tensor([0]), 2)
    assert loss.item() == pytest.approx(math.log(1 + math.e ** 2))
    loss.backward()
    p_tool = math.e ** 3 / (math.e ** 1 + math.e ** 3)
    # d/dh = (p0 - 1) * (1, 0) + p_tool * (3, 5)
    assert hidden.grad.tolist()[0] == pytest.approx([(1 - p_tool - 1) * 1 + p_tool * 3, p_tool * 5])
    assert rows.grad.tolist()[0] == pytest.approx([p_tool * 1.0, 0.0])


def test_chunks_give_the_dense_loss_and_gradients(monkeypatch):
    """Against cross_entropy over the explicit table (tool rows written in, padding rows cut), over several chunks."""
    torch.manual_seed(0)
    vocab, padded, h, n = 13, 16, 8, 11
    weight = torch.randn(padded, h)
    index = torch.tensor([3, 7, 12])
    labels = torch.tensor([3, 0, 7, 12, 5, 3, 1, 12, 9, 7, 2])
    hidden = torch.randn(n, h, requires_grad=True)
    rows = torch.randn(3, h, requires_grad=True)
    monkeypatch.setattr(head_loss, "CHUNK_ELEMENTS", 3 * vocab)   # chunks of 3 positions: 4 chunks, the last short
    loss = HeadCrossEntropy.apply(hidden, rows, weight, index, labels, vocab)
    (2.0 * loss).backward()   # the backward scales by the incoming gradient
    got = hidden.grad.clone(), rows.grad.clone()
    hidden.grad = rows.grad = None
    table = weight[:vocab].index_copy(0, index, rows)
    ref = F.cross_entropy(hidden @ table.t(), labels, reduction="sum")
    (2.0 * ref).backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(got[0], hidden.grad)
    torch.testing.assert_close(got[1], rows.grad)


def test_bf16_a_frozen_decoder_and_no_target():
    """In bf16 (the GPU dtype) within bf16's rounding of the dense loss; hidden states without a gradient (a head-only
    addition: only the rows get one); no target position: a zero loss that still backpropagates."""
    torch.manual_seed(0)
    vocab, h, n = 50, 16, 9
    weight, index, labels = torch.randn(56, h).bfloat16(), torch.tensor([4, 9, 30]), torch.randint(0, vocab, (n,))
    hidden = torch.randn(n, h).bfloat16().requires_grad_()
    rows = torch.randn(3, h).bfloat16().requires_grad_()
    loss = HeadCrossEntropy.apply(hidden, rows, weight, index, labels, vocab)
    (loss / 7).backward()
    got = hidden.grad.clone(), rows.grad.clone()
    hidden.grad = rows.grad = None
    ref = F.cross_entropy((hidden @ weight[:vocab].index_copy(0, index, rows).t()).float(), labels, reduction="sum")
    (ref / 7).backward()
    assert got[0].dtype == got[1].dtype == torch.bfloat16
    assert loss.item() == pytest.approx(ref.item(), rel=1e-3)
    torch.testing.assert_close(got[0], hidden.grad, rtol=2e-2, atol=4e-3)
    torch.testing.assert_close(got[1], rows.grad, rtol=2e-2, atol=4e-3)
    frozen, rows = torch.randn(n, h), torch.randn(3, h, requires_grad=True)
    HeadCrossEntropy.apply(frozen, rows, weight.float(), index, labels, vocab).backward()
    assert rows.grad.abs().sum() > 0
    none = torch.randn(0, h, requires_grad=True)
    loss = HeadCrossEntropy.apply(none, rows, weight.float(), index, labels[:0], vocab)
    loss.backward()
    assert loss.item() == 0 and none.grad.shape == (0, h)


def test_the_loop_trains_with_it_to_the_same_numbers(tmp_path, sample_data, monkeypatch):
    """A stage with train.chunked_loss runs HeadCrossEntropy, keeps no tensor of vocabulary width for
    the backward pass, and gives the plain loss's curve and adapter."""
    run_stage("memorization", tmp_path / "chunked", sample_data, "stages.memorization.max_steps=2",
              "train.chunked_loss=true")
    run_stage("memorization", tmp_path / "plain", sample_data, "stages.memorization.max_steps=2")
    calls, widths = [], []
    forward = HeadCrossEntropy.forward

    def spy(ctx, *args):
        calls.append(args[-1])
        return forward(ctx, *args)
    monkeypatch.setattr(HeadCrossEntropy, "forward", staticmethod(spy))

    def record(t):
        widths.append(t.shape[-1] if t.dim() else 0)
        return t
    # SGD: Adam's first steps divide by the gradient's own size, so a float32 difference in the last bit of a
    # near-zero gradient would show up as a whole step of difference in the adapter
    steps = ["stages.retrieval.max_steps=6", "lora.dropout=0", "train.optimizer=sgd",
             "stages.retrieval.learning_rate=1.0"]
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        _, chunked = run_stage("retrieval", tmp_path / "chunked", sample_data, *steps, "train.chunked_loss=true")
    vocab = calls[0]
    assert len(calls) == 6 and max(widths) < vocab   # plain: the log-softmax [targets x vocab] is saved
    monkeypatch.setattr(HeadCrossEntropy, "forward", staticmethod(forward))
    widths.clear()
    with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
        _, plain = run_stage("retrieval", tmp_path / "plain", sample_data, *steps)
    assert len(calls) == 6 and max(widths) >= vocab
    assert chunked[-1] < chunked[0]
    assert chunked == pytest.approx(plain, rel=1e-5, abs=1e-6)
    a, b = (load_file(str(tmp_path / n / "retrieval_training" / "adapter" / "adapter_model.safetensors"))
            for n in ("chunked", "plain"))
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-5)   # float32 sums in another order


def test_models_it_cannot_stand_in_for(trained):
    """head_layer: only a sparse tool-row head over a frozen table, in a model family with nothing after the head;
    otherwise the loop is told why the plain loss runs."""
    from toolgen import models
    from toolgen.tool_rows import sparse_tool_rows
    model = models.load_stage(f"{trained['output_dir']}/retrieval_training", trainable=True)[1]
    assert head_loss.head_layer(model) is None          # peft's own dense forward: the rows are not split out
    sparse_tool_rows(model)
    assert head_loss.head_layer(model) is model.get_output_embeddings().token_adapter
    loss_fn, why = head_loss.chunked_target_loss(model)
    assert loss_fn.head is model.get_output_embeddings().token_adapter and why is None
    assert head_loss.chunked_target_loss(model, zero3=True)[0] is None
    model.config.model_type = "gemma2"                  # soft-capping after the head: the logits are needed
    loss_fn, why = head_loss.chunked_target_loss(model)
    assert loss_fn is None and "'gemma2' is not in head_loss.SUPPORTED" in why
