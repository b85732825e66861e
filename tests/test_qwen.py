"""A Qwen2-architecture base (built in code: Qwen2 layers, a Qwen-like ChatML template with a default system turn and
tool results as <tool_response> user turns, Qwen's pad and end-of-turn tokens): loading, tool-row init, masks, a stage
that trains and reloads to the same logits, tied and untied heads."""

import json
import os

import pytest
import torch

from conftest import run_stage
from toolgen import models
from toolgen.collate import IGNORE, LeftPadCollator, tokenize_messages
from toolgen.config import load_config
from toolgen.tokens import token_words

from conftest import TINY


@pytest.mark.parametrize("tied", [True, False])
def test_qwen2_tool_rows_masks_training_and_reload(tmp_path, sample_data, tied):
    tie = f"model.tie_word_embeddings={str(tied).lower()}"
    cfg = load_config(TINY, ["model.name=tiny-qwen2", tie]).model
    tokens = json.load(open(os.path.join(sample_data, "tool_tokens.json")))["tokens"]
    tokenizer, model, tool_ids = models.load_base(cfg, tokens)
    assert type(model).__name__ == "Qwen2ForCausalLM" and models.is_tied(model) == tied
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.eos_token == "<|im_end|>"
    base = models.load_tokenizer(models.resolve_model("tiny-qwen2", tied))
    for table in [model.get_input_embeddings().weight] + ([] if tied else [model.get_output_embeddings().weight]):
        for token, i in list(zip(tokens, tool_ids))[:5]:
            words = base(token_words(token), add_special_tokens=False)["input_ids"]
            torch.testing.assert_close(table[i], table[words].mean(0))
    # the answer and its end-of-turn marker carry loss; the default system turn and the tool response do not
    enc = tokenize_messages(tokenizer, [{"role": "user", "content": "weather in Lisbon"},
                                        {"role": "assistant", "content": tokens[0], "loss": True},
                                        {"role": "tool", "content": "{\"ok\": 1}"},
                                        {"role": "assistant", "content": "done", "loss": True}])
    labeled = tokenizer.decode([i for i, l in zip(enc["input_ids"], enc["labels"]) if l != IGNORE])
    assert labeled == f"{tokens[0]}<|im_end|>\ndone<|im_end|>\n"
    assert "You are a helpful assistant." in tokenizer.decode(enc["input_ids"])

    trained, history = run_stage("memorization", tmp_path, sample_data, "model.name=tiny-qwen2", tie,
                                 "stages.memorization.max_steps=8")
    assert history[-1] < history[0]
    tokenizer, reloaded, _ = models.load_stage(os.path.join(tmp_path, "tool_memorization"))
    batch = LeftPadCollator(tokenizer.pad_token_id)([enc])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        torch.testing.assert_close(trained.eval()(**inputs).logits, reloaded.eval()(**inputs).logits, rtol=0, atol=0)


def test_eager_trained_stage_runs_inference_on_sdpa(tmp_path, sample_data):
    """Eager attention is a training setting (Qwen trained with it until varlen); load_stage serves inference on SDPA (eager's full
    score matrices ran an evaluation out of memory) with the same logits, and keeps eager for further training."""
    trained, _ = run_stage("memorization", tmp_path, sample_data, "model.name=tiny-qwen2",
                           "model.attn_implementation=eager", "stages.memorization.max_steps=2")
    assert trained.config._attn_implementation == "eager"
    stage_dir = os.path.join(tmp_path, "tool_memorization")
    tokenizer, served, _ = models.load_stage(stage_dir)
    assert served.config._attn_implementation == "sdpa"
    assert models.load_stage(stage_dir, trainable=True)[1].config._attn_implementation == "eager"
    prompts = [tokenize_messages(tokenizer, [{"role": "user", "content": text}])
               for text in ("weather in Lisbon", "convert 3 euros to yen, please")]
    batch = LeftPadCollator(tokenizer.pad_token_id)(prompts)   # left-padded: the mask matters
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(served.eval()(**inputs).logits[real], trained.eval()(**inputs).logits[real],
                                   rtol=1e-4, atol=1e-4)


def test_varlen_attention_trains_qwen2_like_the_packed_sdpa_path(tmp_path, sample_data):
    """Qwen2's attention passes its own keywords (sliding_window) through the interface: varlen takes them and gives
    packed SDPA's loss curve (the way to long agent examples without eager's full score matrices)."""
    runs = {}
    for attn in ("sdpa", "varlen"):
        _, runs[attn] = run_stage("memorization", tmp_path / attn, sample_data, "model.name=tiny-qwen2",
                                  "train.packing=true", f"model.attn_implementation={attn}", "lora.dropout=0",
                                  "stages.memorization.max_steps=6")
    assert runs["varlen"][-1] < runs["varlen"][0]
    assert runs["varlen"] == pytest.approx(runs["sdpa"], rel=1e-4, abs=1e-4)
