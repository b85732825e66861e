"""Scale-out on CPU: 2-process data parallel, DeepSpeed ZeRO-2/3 (DS_ACCELERATOR=cpu), QLoRA 4-bit, a real SIGKILL
and exact resume, and the DeepSpeed configs validated by DeepSpeed's own parser."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, run_stage
from toolgen import models
from toolgen.collate import LeftPadCollator, tokenize_messages
from toolgen.config import load_config

STEPS = ["stages.memorization.max_steps=3"]


def launch(output_dir, data_dir, accelerate_config, *overrides, processes=2, timeout=600):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
           "--num_processes", str(processes)]
    if "deepspeed" in accelerate_config:
        cmd += ["--mixed_precision", "no"]
    cmd += ["toolgen/train.py", "--config", TINY, "--stage", "memorization", "--output-dir", str(output_dir),
            "--data-dir", str(data_dir)] + [a for o in overrides for a in ("--set", o)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(os.path.join(output_dir, "tool_memorization", "metrics.json")) as f:
        return json.load(f)["loss_history"]


@pytest.fixture(scope="module")
def single(tmp_path_factory, sample_data):
    """The reference: one process, batch 8 (= 2 processes x 4)."""
    out = tmp_path_factory.mktemp("single")
    _, history = run_stage("memorization", out, sample_data, *STEPS, "stages.memorization.per_device_batch_size=8")
    return out, history


def logits_of(stage_dir):
    tokenizer, model, _ = models.load_stage(stage_dir)
    batch = LeftPadCollator(tokenizer.pad_token_id)([tokenize_messages(tokenizer, [
        {"role": "user", "content": "Convert 12 miles to km."}, {"role": "assistant", "content": "x", "loss": True}])])
    with torch.no_grad():
        return model.eval()(**{k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}).logits


@pytest.mark.parametrize("accelerate_config", ["cpu_ddp", "deepspeed_zero2", "deepspeed_zero3"])
def test_two_processes_match_one_on_the_same_global_batch(tmp_path, sample_data, single, accelerate_config):
    history = launch(tmp_path, sample_data, f"launch/accelerate/{accelerate_config}.yaml", *STEPS,
                     "stages.memorization.per_device_batch_size=4")
    assert history[0] == pytest.approx(single[1][0], rel=1e-5)     # same data, same weights: the same first loss
    assert history == pytest.approx(single[1], rel=1e-3)           # and the same updates after it
    stage = json.load(open(os.path.join(tmp_path, "tool_memorization", "stage.json")))
    assert stage["processes"] == 2
    if accelerate_config == "deepspeed_zero3":
        # ZeRO-3 saves real (gathered) adapter and tool rows, which reload to the single-process logits
        weights = load_file(os.path.join(tmp_path, "tool_memorization", "adapter", "adapter_model.safetensors"))
        reference = load_file(os.path.join(single[0], "tool_memorization", "adapter", "adapter_model.safetensors"))
        assert weights.keys() == reference.keys()
        for k in weights:
            assert weights[k].shape == reference[k].shape and weights[k].numel() > 0
            torch.testing.assert_close(weights[k], reference[k], rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(logits_of(os.path.join(tmp_path, "tool_memorization")),
                                   logits_of(os.path.join(single[0], "tool_memorization")), rtol=1e-3, atol=1e-3)


def test_packed_batches_on_two_processes_match_one_padded_process(tmp_path, sample_data, single):
    """Packing under data parallel: each process packs its own micro-batch into one row; the loss, normalised over the
    target tokens of both processes, is the single padded process's."""
    history = launch(tmp_path, sample_data, "launch/accelerate/cpu_ddp.yaml", *STEPS,
                     "stages.memorization.per_device_batch_size=4", "train.packing=true")
    assert history == pytest.approx(single[1], rel=1e-3)


def test_compiled_two_processes_save_the_adapter_of_one_process(tmp_path, sample_data, single):
    """train.compile under data parallel (the reference config on several GPUs): accelerate compiles the regions of the
    DDP wrapper, whose state dict names carry its `module.` prefix; the stage saves the same tensor names as one
    process and reloads to its logits (on 4 x H200 the save failed with a KeyError before this was handled)."""
    history = launch(tmp_path, sample_data, "launch/accelerate/cpu_ddp.yaml", *STEPS,
                     "stages.memorization.per_device_batch_size=4", "train.packing=true", "train.compile=true")
    assert history == pytest.approx(single[1], rel=1e-3)
    weights = load_file(os.path.join(tmp_path, "tool_memorization", "adapter", "adapter_model.safetensors"))
    reference = load_file(os.path.join(single[0], "tool_memorization", "adapter", "adapter_model.safetensors"))
    assert weights.keys() == reference.keys()
    torch.testing.assert_close(logits_of(os.path.join(tmp_path, "tool_memorization")),
                               logits_of(os.path.join(single[0], "tool_memorization")), rtol=1e-3, atol=1e-3)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, sample_data):
    common = ["train.lr_scheduler=constant", "train.save_steps=3", "lora.dropout=0.1",
              "stages.memorization.per_device_batch_size=4"]
    common += ["stages.memorization.max_steps=24"]   # the same run, killed and resumed
    _, full = run_stage("memorization", tmp_path / "full", sample_data, *common)
    # The same run in its own process, SIGKILLed (its whole process group) as soon as its first checkpoint is complete.
    cmd = [sys.executable, "toolgen/train.py", "--config", TINY, "--stage", "memorization", "--output-dir",
           str(tmp_path / "cut"), "--data-dir", sample_data] + [a for o in common for a in ("--set", o)]
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = tmp_path / "cut" / "tool_memorization.checkpoints"
    deadline = time.time() + 300
    while not glob.glob(str(ckpts / "step-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(int(d.split("-")[-1]) for d in os.listdir(ckpts) if d.startswith("step-"))
    assert done and max(done) < 24 and not os.path.exists(tmp_path / "cut" / "tool_memorization")
    _, resumed = run_stage("memorization", tmp_path / "cut", sample_data, *common, resume=True)
    assert resumed == pytest.approx(full, rel=1e-5)


def test_qlora_4bit_on_cpu_trains_and_reloads(tmp_path, sample_data):
    model, history = run_stage("memorization", tmp_path, sample_data, "model.quantization=4bit",
                               "stages.memorization.max_steps=6")
    import bitsandbytes as bnb
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert history[-1] < history[0]
    tokenizer, reloaded, _ = models.load_stage(os.path.join(tmp_path, "tool_memorization"))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in reloaded.modules())
    batch = LeftPadCollator(tokenizer.pad_token_id)([tokenize_messages(tokenizer, [
        {"role": "user", "content": "Convert 12 miles to km."}, {"role": "assistant", "content": "x", "loss": True}])])
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(**inputs).logits, reloaded.eval()(**inputs).logits, rtol=0, atol=1e-6)


def test_qlora_keeps_the_unquantized_weights_and_the_activations_in_the_model_dtype():
    """No fp32 upcast of the embedding/head and norms (peft's prepare_model_for_kbit_training did it: fp32 norm
    weights turn the whole residual stream fp32, 3.5x the bf16 path's memory on the agent shape)."""
    import bitsandbytes as bnb
    cfg = load_config(TINY, ["model.quantization=4bit", "model.dtype=bfloat16"])
    tokenizer, model, tool_ids = models.load_base(cfg.model, ["<<GeoCoder&&geocode address>>"])
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model = models.lora_model(model, cfg.lora, tool_ids)
    batch = tokenizer(["Where is Paris?"], return_tensors="pt")
    out = model(**batch, output_hidden_states=True, use_cache=False)
    assert {h.dtype for h in out.hidden_states} == {torch.bfloat16}
    out.logits.float().logsumexp(-1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "ds_configs", "*.json"))), ids=os.path.basename)
def test_deepspeed_configs_parse_after_the_auto_fill(path):
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    with open(path) as f:
        raw = json.load(f)
    assert "optimizer" not in raw and "scheduler" not in raw   # torch AdamW goes through accelerate: nothing to compile
    plugin = DeepSpeedPlugin(hf_ds_config=path)
    hidden = 2048   # what accelerate derives from the model (Llama-3.2-1B's hidden size)
    plugin.deepspeed_config_process(must_match=False, **{
        "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2, "train_batch_size": 8,
        "gradient_clipping": 1.0, "bf16.enabled": True, "fp16.enabled": False,
        "zero_optimization.reduce_bucket_size": hidden * hidden,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        "zero_optimization.stage3_param_persistence_threshold": 10 * hidden})
    filled = json.dumps(plugin.deepspeed_config)
    assert '"auto"' not in filled
    config = DeepSpeedConfig(json.loads(filled))   # one process here: 4 x 2 x 1 = 8
    assert config.zero_optimization_stage == raw["zero_optimization"]["stage"]
    assert config.train_batch_size == 8 and config.bfloat16_config.enabled
