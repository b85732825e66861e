"""Slurm: the chain against a real one-node Slurm (skipped with the reason where it cannot start), and the multi-node
launch line built for 2 nodes x 4 GPUs."""

import os
import re
import shutil
import subprocess
import tempfile

import pytest

import slurm_cluster
from conftest import ROOT

STAGE_DIRS = ("tool_memorization", "retrieval_training", "agent_tuning")


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
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    jobs = re.findall(r"submitted (\w+): job (\d+), log (\S+)", result.stdout)
    assert [j[0] for j in jobs] == ["memorization", "retrieval", "agent"], result.stdout
    return jobs


def test_three_dependent_jobs_run_in_order_and_produce_the_stages(slurm, tmp_path):
    jobs = submit(slurm, tmp_path / "out")
    ids = [j[1] for j in jobs]
    assert slurm_cluster.wait_for(ids, slurm) == ["COMPLETED"] * 3, [open(j[2]).read()[-2000:] for j in jobs
                                                                       if os.path.exists(j[2])]
    info = [slurm_cluster.job_info(i, slurm) for i in ids]
    assert "afterok:" + ids[0] in info[1]["Dependency"] or info[1].get("Dependency") == "(null)"
    for before, after in zip(info, info[1:]):
        assert after["StartTime"] >= before["EndTime"]
    for d in STAGE_DIRS:
        assert os.path.exists(tmp_path / "out" / d / "stage.json")
    log = open(jobs[0][2]).read()
    assert "[memorization]" in log and "loss" in log


def test_a_failed_stage_cancels_the_rest(slurm, tmp_path):
    jobs = submit(slurm, tmp_path / "out", "--set", "stages.memorization.learning_rate=not-a-number")
    ids = [j[1] for j in jobs]
    assert slurm_cluster.wait_for(ids, slurm) == ["FAILED", "CANCELLED", "CANCELLED"]
    for (_, job_id, log) in jobs[1:]:
        info = slurm_cluster.job_info(job_id, slurm)
        assert info["Reason"] == "DependencyNeverSatisfied" and info["RunTime"] == "00:00:00"
        assert not os.path.exists(log)   # never ran: its log was never opened
    assert not any(os.path.exists(tmp_path / "out" / d) for d in STAGE_DIRS)


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
