"""launch/pipeline.sh without training (--dry-run): paths the user gives are relative to where the command runs, the
printed commands can be pasted, bad configs and stage lists stop it before anything runs; and no script spells a
stage (the table in toolgen/config.py does)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

from conftest import ROOT

from toolgen.config import STAGES

PIPELINE = os.path.join(ROOT, "launch", "pipeline.sh")


def dry_run(cwd, *args):
    return subprocess.run(["bash", PIPELINE, "--dry-run", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})


def flag(line, name):
    return line[line.index(name) + 1]


def test_dry_run_from_another_directory_makes_paths_absolute_against_it(tmp_path):
    # a config shipped in the repository is found from anywhere; the output folder is the caller's
    out = tmp_path / "runs, the first"   # a comma and a space: the quoting must carry them
    result = dry_run(tmp_path, "--config", "launch/configs/tiny.yaml", "--output-dir", "runs, the first/",
                     "--accelerate-config", "launch/accelerate/cpu.yaml", "--set", "lora.r=4")
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert lines[0] == ["cd", ROOT]
    prepare, *stages, evaluate = lines[1:]
    assert flag(prepare, "--out") == str(out / "data") and flag(prepare, "--config") == os.path.join(
        ROOT, "launch/configs/tiny.yaml")
    assert [flag(line, "--stage") for line in stages] == list(STAGES)
    for line in stages:
        assert flag(line, "--output-dir") == str(out) and flag(line, "--data-dir") == str(out / "data")
        assert flag(line, "--config_file") == os.path.join(ROOT, "launch/accelerate/cpu.yaml")
        assert line[-2:] == ["--set", "lora.r=4"]
    assert flag(evaluate, "--output-dir") == str(out)
    assert all(os.path.isabs(line[0]) for line in lines[1:])   # the resolved interpreter
    assert not out.exists()   # a dry run runs nothing


def test_the_callers_own_file_wins_over_the_repositorys(tmp_path):
    mine = tmp_path / "launch" / "configs" / "tiny.yaml"
    mine.parent.mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "launch", "configs", "tiny.yaml"), mine)
    result = dry_run(tmp_path, "--config", "launch/configs/tiny.yaml", "--data-dir", "prepared",
                     "--accelerate-config", "launch/accelerate/cpu.yaml", "--no-eval")
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()[1:]]
    assert len(lines) == len(STAGES)   # --data-dir given: no prepare step
    for line in lines:
        assert flag(line, "--config") == str(mine) and flag(line, "--data-dir") == str(tmp_path / "prepared")


def test_a_bad_config_or_stage_list_stops_before_any_step(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  rank: 8\n")
    for args, message in [(["--config", "missing.yaml"], str(tmp_path / "missing.yaml")),
                          (["--config", "bad.yaml"], "lora.rank"),
                          (["--config", "launch/configs/tiny.yaml", "--stages", "memorization,retreival"], "retreival"),
                          (["--config", "launch/configs/tiny.yaml", "--stages", "retrieval"], "memorization")]:
        result = dry_run(tmp_path, "--output-dir", "out", *args)
        assert result.returncode != 0 and message in result.stderr, (args, result.stderr)
        assert result.stdout == "", args


def code_lines(path):
    """The script without its comments (usage examples may name stages)."""
    return [re.sub(r"(^|\s)#.*", "", line) for line in open(os.path.join(ROOT, path))]


def test_no_script_spells_a_stage_they_ask_the_config():
    for path in ("launch/pipeline.sh", "launch/common.sh", "slurm/pipeline.sh", "slurm/stage.sbatch",
                 "slurm/node_launch.sh"):
        code = "".join(code_lines(path))
        for stage in STAGES.values():
            for word in (stage.name, stage.folder, stage.file):
                assert not re.search(rf"\b{re.escape(word)}\b", code), f"{path} spells {word!r}"
    assert "toolgen.config stages" in "".join(code_lines("launch/common.sh"))


NOTICES = ("Failed to load CPU gemm_4bit_forward", "Setting accelerator to CPU", "num_cpu_threads_per_process",
           "clean_up_tokenization_spaces", "Removed shared tensor", "Generating train split", "Loading weights")


def test_a_first_run_prints_its_steps_not_the_libraries_notices(tmp_path):
    """One real stage through the pipeline on the tiny model (checkpoints on, as in real runs): the output holds the
    step lines and the stage's summary, none of the notices that once came with every launch."""
    result = subprocess.run(["bash", PIPELINE, "--config", "launch/configs/tiny.yaml", "--output-dir", str(tmp_path),
                             "--stages", "memorization", "--no-eval", "--set", "stages.memorization.max_steps=2",
                             "--set", "train.save_steps=1"], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "== stage memorization" in output and "[memorization] 2 steps" in output
    assert [n for n in NOTICES if n in output] == []
