"""Checkpoints: exact resume (also across an epoch and with other logging, saving or compilation), what an earlier
run of a stage needs (--resume / --overwrite), and a diverged step stopped before its update."""

import glob
import json
import os
import shutil
import time

import pytest
import torch

from conftest import run_stage
from toolgen.checkpoint import CheckpointError
from toolgen.train import StageError


class Interrupted(Exception):
    pass


def stop_after_checkpoint(monkeypatch, at_step):
    """A run that dies right after its checkpoint of `at_step` is complete (as a killed job would)."""
    from toolgen import checkpoint
    save = checkpoint.save_checkpoint

    def save_then_stop(accelerator, ckpt_root, progress):
        save(accelerator, ckpt_root, progress)
        if progress["step"] == at_step:
            raise Interrupted()
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_stop)


@pytest.mark.parametrize("grouped", [False, True])
def test_resume_continues_exactly(tmp_path, sample_data, grouped, monkeypatch):
    common = ["train.lr_scheduler=constant", "stages.memorization.per_device_batch_size=4", "train.save_steps=3",
              "lora.dropout=0.1",   # dropout: the resumed run must also restore the RNG
              f"train.group_by_length={str(grouped).lower()}", "stages.memorization.max_steps=24"]
    _, full = run_stage("memorization", tmp_path / "full", sample_data, *common)
    with monkeypatch.context() as m:
        stop_after_checkpoint(m, 21)
        with pytest.raises(Interrupted):
            run_stage("memorization", tmp_path / "cut", sample_data, *common)
    _, resumed = run_stage("memorization", tmp_path / "cut", sample_data, *common, resume=True)
    assert resumed == pytest.approx(full, rel=1e-5)   # 24 steps cross an epoch boundary (18 batches per epoch)


def test_tensorboard_logs_each_step_once_after_a_resume(tmp_path, sample_data, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    common = ["train.save_steps=2", "train.logging_steps=1", "stages.memorization.max_steps=10",
              "train.lr_scheduler=constant"]
    with monkeypatch.context() as m:   # dies after logging step 6; its last checkpoint is then step 4
        stop_after_checkpoint(m, 6)
        with pytest.raises(Interrupted):
            run_stage("memorization", tmp_path, sample_data, *common)
    shutil.rmtree(tmp_path / "tool_memorization.checkpoints" / "step-6")
    # TensorBoard reads a folder's event files in name order: time in whole seconds, host, process, then a counter
    # of the process's writers. A resume is a later process; in this one process, a resume within the same second
    # sorts by that counter, as text ("10" before "9"), so the test waits for the next second as a resume would.
    time.sleep(1)
    _, history = run_stage("memorization", tmp_path, sample_data, *common, resume=True)
    runs = glob.glob(os.path.join(tmp_path, "runs", "*", "tool_memorization"))
    assert len(runs) == 1 and len(glob.glob(os.path.join(runs[0], "events.out.tfevents.*"))) == 2
    acc = EventAccumulator(runs[0])   # the folder, as TensorBoard reads it
    acc.Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("memorization/loss")]
    # the first run logged steps 1-6 and the resumed one 5-10: steps 5 and 6 appear once, the resumed run's values
    assert [s for s, _ in logged] == list(range(1, 11))
    assert [v for _, v in logged] == pytest.approx(history, rel=1e-6)


@pytest.mark.parametrize("case, expected", [
    ("no-resume", "holds checkpoints of an earlier run: --resume continues it, --overwrite deletes them"),
    ("resume-nothing", "no complete checkpoint in"),
    ("resume-changed", r"stages.memorization.per_device_batch_size: 4 -> 2"),
    ("finished", "holds a finished 'memorization' stage: pass --overwrite"),
])
def test_earlier_runs_are_handled_explicitly(tmp_path, sample_data, monkeypatch, case, expected):
    common = ["train.save_steps=2", "stages.memorization.max_steps=6", "stages.memorization.per_device_batch_size=4"]
    if case == "resume-nothing":
        with pytest.raises(CheckpointError, match=expected):
            run_stage("memorization", tmp_path, sample_data, *common, resume=True)
        return
    if case == "finished":
        run_stage("memorization", tmp_path, sample_data, "stages.memorization.max_steps=2")
        with pytest.raises(CheckpointError, match=expected):
            run_stage("memorization", tmp_path, sample_data, "stages.memorization.max_steps=2")
        run_stage("memorization", tmp_path, sample_data, "stages.memorization.max_steps=3", overwrite=True)
        assert json.load(open(tmp_path / "tool_memorization" / "stage.json"))["steps"] == 3
        return
    with monkeypatch.context() as m:
        stop_after_checkpoint(m, 4)
        with pytest.raises(Interrupted):
            run_stage("memorization", tmp_path, sample_data, *common)
    changed = ["stages.memorization.per_device_batch_size=2"] if case == "resume-changed" else []
    with pytest.raises(CheckpointError, match=expected):
        run_stage("memorization", tmp_path, sample_data, *common, *changed, resume=case == "resume-changed")
    # --overwrite starts over: the old checkpoints go, the stage finishes
    _, history = run_stage("memorization", tmp_path, sample_data, *common, *changed, overwrite=True)
    assert len(history) == 6 and os.path.exists(tmp_path / "tool_memorization" / "stage.json")


def test_nan_loss_stops_before_the_update_and_sets_the_diverged_checkpoint_aside(tmp_path, sample_data, monkeypatch):
    """A NaN loss at step 4 comes from the weights after step 3: its checkpoint is set aside, step 2 is named, and no
    update touched the weights in memory."""
    from toolgen import loss as loss_module, step as step_module
    calls = {"n": 0}

    def nan_at_step_4(model, batch, vocab_size):
        calls["n"] += 1
        value = loss_module.target_loss(model, batch, vocab_size)
        return value * float("nan") if calls["n"] == 4 else value
    seen = {}
    real_update = step_module.update

    def spy(accelerator, model, *args):
        seen["before"] = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
        seen["model"] = model
        return real_update(accelerator, model, *args)
    monkeypatch.setattr(step_module, "target_loss", nan_at_step_4)
    from toolgen import train
    monkeypatch.setattr(train, "update", spy)
    with pytest.raises(StageError, match=r"loss is nan at step 4, with the weights after step 3; stopped before the "
                                         r"update \(last good checkpoint: --resume continues from .*step-2\)"):
        run_stage("memorization", tmp_path, sample_data, "train.save_steps=1", "stages.memorization.max_steps=6")
    after = {k: v for k, v in seen["model"].named_parameters() if v.requires_grad}
    for k, v in seen["before"].items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    ckpts = sorted(os.listdir(tmp_path / "tool_memorization.checkpoints"))
    assert ckpts == ["diverged-step-3", "step-1", "step-2"]
    assert not os.path.exists(os.path.join(tmp_path, "tool_memorization"))


def test_divergence_from_a_huge_learning_rate_names_no_good_checkpoint(tmp_path, sample_data):
    with pytest.raises(StageError, match=r"loss is (nan|inf) at step 2.*no checkpoint before it"):
        run_stage("memorization", tmp_path, sample_data, "train.optimizer=sgd", "stages.memorization.learning_rate=1e30",
                  "train.save_steps=1", "stages.memorization.max_steps=5")
    assert os.listdir(tmp_path / "tool_memorization.checkpoints") == ["diverged-step-1"]


def test_a_setting_newer_than_the_checkpoint_at_its_default_is_no_change():
    """A checkpoint written before a config key existed resumes when the key is at its default (the run it did is
    the same), and not when it is set otherwise."""
    from toolgen.checkpoint import resume_mismatches
    from toolgen.config import Config
    now = {"config": Config().to_dict(), "from_scratch": False}
    saved = {"config": Config().to_dict(), "from_scratch": False}
    del saved["config"]["add_tools"]["lora_learning_rate"]
    assert resume_mismatches(saved, now) == []
    now["config"]["add_tools"]["lora_learning_rate"] = 1e-4
    assert resume_mismatches(saved, now) == ["config.add_tools.lora_learning_rate: None -> 0.0001"]
    now["from_scratch"] = True   # not a config key: a difference whatever its value
    assert "from_scratch: False -> True" in resume_mismatches(saved, now)


def test_a_resume_may_change_logging_and_compilation(tmp_path, sample_data, monkeypatch):
    """MAY_CHANGE_ON_RESUME: a run cut after its step-4 checkpoint resumes with another logging interval and with
    compilation switched on, and ends with the uninterrupted run's losses. (The run's keys carry a `config.` prefix:
    compared without it, once no change at all was allowed.)"""
    common = ["train.save_steps=2", "stages.memorization.max_steps=6", "train.packing=true"]
    _, full = run_stage("memorization", tmp_path / "full", sample_data, *common)
    with monkeypatch.context() as m:
        stop_after_checkpoint(m, 4)
        with pytest.raises(Interrupted):
            run_stage("memorization", tmp_path / "cut", sample_data, *common)
    _, resumed = run_stage("memorization", tmp_path / "cut", sample_data, *common, "train.logging_steps=3",
                           "train.compile=true", resume=True)
    assert resumed == pytest.approx(full, rel=1e-4, abs=1e-4)
    # the whole model compiled as one graph: its checkpoint's names differ (`_orig_mod.` first); resumed uncompiled
    _, whole = run_stage("memorization", tmp_path / "whole", sample_data, *common, "train.compile=true",
                         "train.compile_regional=false")
    assert whole == pytest.approx(full, rel=1e-4, abs=1e-4)
    shutil.rmtree(tmp_path / "whole" / "tool_memorization")
    shutil.rmtree(tmp_path / "whole" / "tool_memorization.checkpoints" / "step-6")   # resumes after step 4
    _, again = run_stage("memorization", tmp_path / "whole", sample_data, *common, resume=True)
    assert again == pytest.approx(full, rel=1e-4, abs=1e-4)


def test_two_writers_of_one_folder_at_once_both_finish_and_leave_nothing_behind(tmp_path):
    """Two benchmark jobs that build the same cache folder side by side: neither removes the other's half-written
    folder (each writes its own temporary one), the last to finish is what stays, and the folder has the mode that
    os.makedirs gives."""
    from toolgen.checkpoint import atomic_folder
    final = tmp_path / "cache" / "model"
    with atomic_folder(str(final)) as first:
        (tmp_path / "first").write_text("x")
        shutil.copy(tmp_path / "first", os.path.join(first, "weights"))
        with atomic_folder(str(final)) as second:
            assert second != first and os.path.exists(os.path.join(first, "weights"))
            with open(os.path.join(second, "weights"), "w") as f:
                f.write("second")
        assert (final / "weights").read_text() == "second"
    assert (final / "weights").read_text() == "x"
    assert sorted(os.listdir(tmp_path / "cache")) == ["model"]
    os.makedirs(tmp_path / "plain")
    assert os.stat(final).st_mode == os.stat(tmp_path / "plain").st_mode
