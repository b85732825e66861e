"""Slurm: the chain against a real one-node Slurm (skipped with the reason where it cannot start), the dry run and the
checks before submission (sbatch replaced by a shim that records its arguments), and the multi-node launch line built
for 2 nodes x 4 GPUs."""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import types

import pytest

import slurm_cluster
from conftest import ROOT

from toolgen.config import STAGES

STAGE_DIRS = tuple(s.folder for s in STAGES.values())
SBATCH_SHIM = """#!/usr/bin/env bash
# stands in for sbatch: records its arguments (one file per call, NUL-separated), answers like sbatch --parsable
n=$(( $(cat "$SBATCH_LOG/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$SBATCH_LOG/count"
printf '%s\\0' "$@" > "$SBATCH_LOG/$n"
echo "$((100 + n));toolgen-test"
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = slurm_cluster.why_not()
    if reason:
        pytest.skip(reason)
    try:
        # not under pytest's tmp folder: it is private to root, and munged runs as the munge user
        root = tempfile.mkdtemp(prefix="toolgen-slurm-")
        os.chmod(root, 0o755)
        env, stop = slurm_cluster.start(root)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        pytest.skip(f"Slurm could not start here: {e}")
    yield env
    stop()
    shutil.rmtree(root, ignore_errors=True)


def submit(env, out, *extra):
    result = subprocess.run(["bash", "slurm/pipeline.sh", "--config", "launch/configs/tiny.yaml", "--output-dir", str(out),
                             "--stages", "memorization,retrieval,agent", "--", *extra],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    jobs = re.findall(r"^submitted (\w+): job (\d+), log (.+)$", result.stdout, re.M)
    assert [j[0] for j in jobs] == ["memorization", "retrieval", "agent"], result.stdout
    return jobs


@pytest.fixture(scope="module")
def chain(slurm, tmp_path_factory):
    """One chain through the real Slurm, submitted the hard way: a comma and a space in the output folder, and a
    `python3` first on PATH that is not ours (PYTHON names the real one)."""
    base = tmp_path_factory.mktemp("chain")
    fake = base / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'a python3 from PATH without our packages' >&2\nexit 1\n")
    fake.chmod(0o755)
    out = base / "out, with a comma"
    env = {**slurm, "PATH": f"{fake.parent}:{slurm['PATH']}", "PYTHON": sys.executable}
    jobs = submit(env, out)
    ids = [j[1] for j in jobs]
    # Read right away, while the later jobs still wait: once a dependency is met Slurm shows it as (null).
    dependencies = [slurm_cluster.job_info(i, slurm).get("Dependency") for i in ids]
    states = slurm_cluster.wait_for(ids, slurm)
    return types.SimpleNamespace(base=base, out=out, jobs=jobs, ids=ids, dependencies=dependencies, states=states)


def logs(jobs):
    return [open(j[2]).read()[-2000:] for j in jobs if os.path.exists(j[2])]


def test_three_dependent_jobs_run_in_order_and_produce_the_stages(chain, slurm):
    assert chain.states == ["COMPLETED"] * 3, logs(chain.jobs)
    ids = chain.ids
    assert chain.dependencies[0] == "(null)"
    for before, dependency in zip(ids, chain.dependencies[1:]):
        assert re.fullmatch(rf"afterok:{before}(_\*)?\(unfulfilled\)", dependency), chain.dependencies
    info = [slurm_cluster.job_info(i, slurm) for i in ids]
    for before, after in zip(info, info[1:]):
        assert after["StartTime"] >= before["EndTime"]
    log = open(chain.jobs[0][2]).read()
    assert "[memorization]" in log and "loss" in log


def test_a_comma_and_a_space_in_the_output_dir_reach_the_jobs(chain):
    assert chain.states == ["COMPLETED"] * 3, logs(chain.jobs)
    for d in STAGE_DIRS:
        assert os.path.exists(chain.out / d / "stage.json")
    assert sorted(os.listdir(chain.base)) == ["bin", chain.out.name]   # nothing at the path cut at the comma
    for stage, job_id, log in chain.jobs:
        assert log == str(chain.out / "logs" / f"toolgen-{stage}-{job_id}.out") and os.path.exists(log)


def test_the_jobs_run_the_python_that_submitted_them(chain):
    # the first python3 on the jobs' PATH exits 1: the stages completed with the interpreter PYTHON named
    assert chain.states == ["COMPLETED"] * 3, logs(chain.jobs)
    assert f"python {sys.executable}" in open(chain.jobs[0][2]).read()


def test_a_failed_stage_cancels_the_rest(slurm, tmp_path):
    jobs = submit(slurm, tmp_path / "out", "--set", "stages.memorization.learning_rate=not-a-number")
    ids = [j[1] for j in jobs]
    assert slurm_cluster.wait_for(ids, slurm) == ["FAILED", "CANCELLED", "CANCELLED"]
    for (_, job_id, log) in jobs[1:]:
        info = slurm_cluster.job_info(job_id, slurm)
        # RunTime is no evidence: for a job cancelled while pending some Slurm builds count it from the epoch
        # ("20784-10:21:05"), others report 00:00:00
        assert info["Reason"] == "DependencyNeverSatisfied"
        assert not os.path.exists(log)   # never ran: its log was never opened
    assert not any(os.path.exists(tmp_path / "out" / d) for d in STAGE_DIRS)


def shimmed(tmp_path):
    """An environment whose sbatch is SBATCH_SHIM; returns (env, calls) where calls() lists each call's arguments."""
    shim, log = tmp_path / "shim" / "sbatch", tmp_path / "sbatch-calls"
    shim.parent.mkdir()
    log.mkdir()
    shim.write_text(SBATCH_SHIM)
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}:{os.environ['PATH']}", "SBATCH_LOG": str(log),
           "PYTHON": sys.executable}

    def calls():
        n = int((log / "count").read_text()) if (log / "count").exists() else 0
        return [(log / str(i)).read_text().split("\0")[:-1] for i in range(1, n + 1)]
    return env, calls


def test_dry_run_prints_commands_that_paste_as_they_are(tmp_path):
    # run from another directory with a relative output dir holding a space and a comma; the printed lines, run by
    # bash as they are, make the same sbatch calls a real submission would, dependencies included
    env, calls = shimmed(tmp_path)
    result = subprocess.run(["bash", os.path.join(ROOT, "slurm", "pipeline.sh"), "--dry-run", "--config",
                             "launch/configs/tiny.yaml", "--output-dir", "my out,1", "--", "--set", "lora.r=4"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert calls() == [] and not (tmp_path / "my out,1").exists()   # a dry run submits nothing
    subprocess.run(["bash", "-euo", "pipefail", "-c", result.stdout], cwd=tmp_path, env=env, check=True)
    out = str(tmp_path / "my out,1")
    submitted = calls()
    assert len(submitted) == len(STAGES) + 1
    for n, args in enumerate(submitted):
        script = args.index(os.path.join(ROOT, "slurm", "stage.sbatch"))
        options, job = args[:script], args[script + 1:]
        assert job[job.index("--output-dir") + 1] == out
        assert job[job.index("--config") + 1] == os.path.join(ROOT, "launch", "configs", "tiny.yaml")
        assert job[job.index("--python") + 1] == sys.executable or os.path.samefile(job[job.index("--python") + 1],
                                                                                     sys.executable)
        assert job[job.index("--") + 1:] == ["--set", "lora.r=4"]
        assert not any(a.startswith("--export") for a in options)
        assert options[options.index("--output") + 1] == out + "/logs/%x-%j.out"
        assert ("--dependency" in options) == (n > 0)
        if n:
            assert options[options.index("--dependency") + 1] == f"afterok:{100 + n}"   # the previous job's id
    assert [a[a.index("--stage") + 1] for a in submitted] == [*STAGES, "eval"]


def test_bad_config_or_unknown_stage_submits_nothing(tmp_path):
    env, calls = shimmed(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  optimizer: lion\n")
    for dry in ([], ["--dry-run"]):
        for args, message in [(["--config", "missing.yaml"], str(tmp_path / "missing.yaml")),
                              (["--config", "bad.yaml"], "train.optimizer"),
                              (["--config", "launch/configs/tiny.yaml", "--stages", "memorization,bogus"], "bogus")]:
            result = subprocess.run(["bash", os.path.join(ROOT, "slurm", "pipeline.sh"), *dry, *args], cwd=tmp_path,
                                    env=env, capture_output=True, text=True)
            assert result.returncode != 0 and message in result.stderr, (dry, args, result.stderr)
            assert "sbatch" not in result.stdout and calls() == [], (dry, args)


def node_line(rank, nodes=2, gpus=4):
    env = {**os.environ, "SLURM_NNODES": str(nodes), "SLURM_NODEID": str(rank), "TOOLGEN_MAIN_ADDR": "gpu-node-017",
           "TOOLGEN_MAIN_PORT": "23456", "TOOLGEN_GPUS_PER_NODE": str(gpus)}
    return subprocess.run(["bash", "slurm/node_launch.sh", "--print", "--", "--stage", "agent"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=True).stdout.split()


def flag(line, name):
    return line[line.index(name) + 1]


def test_multi_node_launch_line_for_two_nodes_of_four_gpus():
    lines = [node_line(0), node_line(1)]
    assert [flag(l, "--machine_rank") for l in lines] == ["0", "1"]
    for line in lines:
        assert flag(line, "--num_machines") == "2" and flag(line, "--num_processes") == "8"
        assert flag(line, "--main_process_ip") == "gpu-node-017" and flag(line, "--main_process_port") == "23456"
        assert flag(line, "--config_file") == "launch/accelerate/multi_node.yaml"
    assert "deepspeed_multinode_launcher: standard" in open(os.path.join(ROOT, "launch/accelerate/multi_node.yaml")).read()
    # The rank must be read on each node (inside srun), never expanded once on the batch host.
    sbatch = open(os.path.join(ROOT, "slurm", "stage.sbatch")).read()
    assert "SLURM_NODEID" not in sbatch and re.search(r"srun .*bash slurm/node_launch.sh", sbatch)
