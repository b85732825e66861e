"""The speed benchmark: its FLOP count, its steady-state window, its job order, and a CPU run of the whole thing."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import flops  # noqa: E402
import step_anatomy  # noqa: E402
import throughput  # noqa: E402

TINY_CONFIG = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2,
               "num_key_value_heads": 1}


def test_flops_per_token_against_a_hand_count():
    # linear (in, out): q 4x4, k 4x2, v 4x2, o 4x4, gate 4x8, up 4x8, down 8x4 -> N = 16+8+8+16+32+32+32 = 144
    # LoRA r=1: (4+4)+(4+2)+(4+2)+(4+4)+(4+8)+(4+8)+(8+4) = 64 parameters
    # two sequences of 2 and 4 tokens (6 tokens), 1 and 2 targets, vocabulary 10 of which 2 tools:
    #   attention 6 * 1 layer * 4 * (2^2 + 4^2) / 6 = 80;  head (4*10*4 + 2*2*4) * 3 / 6 = 88
    work = flops.flops_per_token(TINY_CONFIG, 1, 10, 2, [2, 4], [1, 2])
    assert work["n_frozen"] == 144 and work["n_lora"] == 64
    assert work["frozen"] == 576 and work["lora"] == 384
    assert work["attention"] == pytest.approx(80) and work["head"] == pytest.approx(88)
    assert work["total"] == pytest.approx(576 + 384 + 80 + 88)


def test_datasheet_peak_by_card_name():
    assert flops.datasheet_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert flops.datasheet_peak("NVIDIA H100 PCIe") == 756e12
    assert flops.datasheet_peak("NVIDIA H200") == 989.4e12
    assert flops.datasheet_peak("cpu") is None


def test_steady_state_skips_the_warmup_updates():
    # updates end at 10 s (compiling), 11, 12, 13 s: the 3 timed updates take 1 s each, the first 9 s too long
    clock = {"update_end_s": [10.0, 11.0, 12.0, 13.0], "tokens": [5, 100, 200, 300]}
    s = throughput.steady_state(clock, warmup=1, steps=3)
    assert s["tokens_per_s"] == pytest.approx(600 / 3) and s["update_s"] == pytest.approx(1.0)
    assert s["warmup_excess_s"] == pytest.approx(9.0)
    with pytest.raises(ValueError, match="4 updates recorded"):
        throughput.steady_state(clock, warmup=2, steps=3)


def test_jobs_interleave_repeats_and_scaling_comes_last():
    jobs = throughput.plan(["retrieval", "agent"], ["ours", "plain", "tuned-eager"], 2, {"tuned-eager"}, 4)
    names = [j["name"] for j in jobs]
    assert names[:6] == ["retrieval-ours-r1", "retrieval-plain-r1", "retrieval-tuned-eager-r1",
                         "agent-ours-r1", "agent-plain-r1", "agent-tuned-eager-r1"]
    assert names[6:10] == ["retrieval-ours-r2", "retrieval-plain-r2", "agent-ours-r2", "agent-plain-r2"]
    assert [(j["launcher"], j["gpus"]) for j in jobs[10:]] == [("ddp", 4), ("zero2", 4), ("zero3", 4)]
    # more repeats into the same folder: from the second on, the scaling jobs ran already
    more = throughput.plan(["agent"], ["ours"], 3, set(), 4, first=2)
    assert [j["name"] for j in more] == ["agent-ours-r2", "agent-ours-r3"]
    some = throughput.plan(["agent"], ["ours"], 1, set(), 4, launchers=["ddp", "zero2"])
    assert [j["name"] for j in some] == ["agent-ours-r1", "agent-ours-ddp4", "agent-ours-zero24"]
    both = throughput.plan(["agent"], ["ours"], 1, set(), 4, launchers=["ddp"], scaling_systems=["ours", "ours-even"])
    assert [(j["name"], j["system"]) for j in both[1:]] == [("agent-ours-ddp4", "ours"),
                                                            ("agent-ours-even-ddp4", "ours-even")]


def test_the_benchmark_runs_the_loop_and_the_trainer_on_cpu(tmp_path):
    """Both scripts end to end on the tiny model: the loop's own process (accelerate launch toolgen/train.py) and
    the Trainer baselines, then the report with the keys the results need."""
    run = tmp_path / "run"
    subprocess.run([sys.executable, "benchmarks/throughput.py", "--tiny", "--out", str(run), "--stages", "retrieval",
                    "--systems", "ours", "ours-packed", "plain", "tuned", "--repeats", "1",
                    "--variant", "ours-packed=train.packing=true"], cwd=ROOT, check=True, timeout=900)
    rows = [json.loads(line) for line in open(run / "results.jsonl")]
    assert {r["system"] for r in rows} == {"ours", "ours-packed", "plain", "tuned"} and not any("error" in r for r in rows)
    ours = next(r for r in rows if r["system"] == "ours")
    assert "toolgen/train.py" in ours["command"] and ours["timed_tokens"] > 0
    packed = next(r for r in rows if r["system"] == "ours-packed")   # a variant: the loop with its change
    assert "--set train.packing=true" in packed["command"] and "--set train.packing=true" not in ours["command"]
    subprocess.run([sys.executable, "benchmarks/throughput_report.py", str(run), "--out", str(tmp_path / "tp")],
                   cwd=ROOT, check=True, timeout=300, capture_output=True)
    result = json.load(open(tmp_path / "tp.json"))
    assert result["measures"] == "toolgen/train.py loop"
    row = result["stages"]["retrieval"]
    for key in ("ours_tokens_per_s", "plain_tokens_per_s", "tuned_tokens_per_s"):
        assert row[key] > 0
    assert row["ours_spread"][0] <= row["ours_tokens_per_s"] <= row["ours_spread"][1]
    assert row["repeats"] == {"ours": 1, "plain": 1, "tuned": 1} and row["flops_per_token"]["total"] > 0
    assert "| retrieval | ours |" in open(tmp_path / "tp.md").read()
    assert row["systems"]["ours-packed"]["tokens_per_s"] > 0


def test_a_job_past_its_timeout_leaves_its_stacks_in_the_log_and_stops_with_its_children(tmp_path):
    """run_until: a job that runs past the timeout is stopped with its whole process group (a launcher's child too),
    and its log says so, with each process's stack where py-spy is installed."""
    import time
    child = tmp_path / "child.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(child)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    with open(tmp_path / "log.txt", "w") as log:
        t0 = time.monotonic()
        assert throughput.run_until([sys.executable, "-c", script], dict(os.environ), log, 2) == "timeout"
    assert time.monotonic() - t0 < 60
    text = open(tmp_path / "log.txt").read()
    assert "timeout after 2 s" in text and ("sleep" in text or "py-spy is not installed" in text)
    pid = int(child.read_text())
    for _ in range(50):   # the grandchild is gone (killed with the group, reaped by init)
        if not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z":
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the job's child {pid} still runs")
    with open(tmp_path / "log2.txt", "w") as log:
        assert throughput.run_until([sys.executable, "-c", "print('ok')"], dict(os.environ), log, 30) == 0


def test_report_reads_the_targets_on_the_shipped_system_and_scaling_against_its_own_one_gpu_run(tmp_path):
    """--ours names the loop system that is the shipped config; QLoRA is compared with `ours` (it is ours + 4bit) and
    N GPUs with one GPU of the system they ran: hand-made rows, hand-computed medians and ratios."""
    import throughput_report
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "lengths.json").write_text(json.dumps({"agent": {"tokens": [4, 6], "targets": [1, 2]}}))
    (tmp_path / "run.json").write_text(json.dumps({
        "card": "NVIDIA H200", "gpus": 4, "versions": {}, "command": "c", "model": "tiny", "tools": 2,
        "config": "launch/configs/tiny.yaml", "steps": {"agent": [1, 2]}, "matmul_peak_flops": 8e14}))
    rows = [("ours", 1, 100.0), ("ours", 1, 120.0), ("ours", 1, 90.0),             # median 100
            ("ours-compiled", 1, 300.0), ("ours-compiled", 1, 250.0), ("ours-compiled", 1, 280.0),   # median 280
            ("ours-qlora", 1, 85.0), ("plain", 1, 70.0), ("tuned-eager", 1, 140.0),
            ("ours", 4, 360.0), ("ours-unbalanced", 4, 330.0)]
    with open(tmp_path / "results.jsonl", "w") as f:
        for system, gpus, tps in rows:
            f.write(json.dumps({"stage": "agent", "system": system, "gpus": gpus, "tokens_per_s": tps,
                                "launcher": "ddp" if gpus > 1 else "1gpu", "peak_mem_gib": 1.0,
                                "first_loss": 2.0}) + "\n")
    r = throughput_report.report(str(tmp_path), ours="ours-compiled")
    row = r["stages"]["agent"]
    assert row["ours_tokens_per_s"] == 280 and row["tuned_tokens_per_s"] == 140 and row["plain_tokens_per_s"] == 70
    assert row["repeats"]["ours"] == 3 and row["tuned_system"] == "tuned-eager"
    assert row["qlora_over_bf16"] == pytest.approx(85 / 100)            # against `ours`, not the shipped variant
    scaling = r["scaling"]["4"]
    assert scaling["system"] == "ours" and scaling["one_gpu_tokens_per_s"] == 100
    assert scaling["ddp_speedup"] == pytest.approx(3.6)                # 360 / 100, not 360 / 280
    # a scaling variant with no one-GPU run of its own: against ours on one GPU, and it says so
    variant = r["scaling_by_system"]["ours-unbalanced"]["4"]
    assert variant["one_gpu_system"] == "ours" and variant["ddp_speedup"] == pytest.approx(3.3)
    md = throughput_report.markdown(r)
    assert "`ours-compiled` (the reference config as shipped)" in md and "--ours ours-compiled" in md


def test_the_profile_script_runs_the_loops_update_on_cpu():
    """benchmarks/profile_step.py builds the stage with toolgen.train.build and profiles toolgen.step.update."""
    out = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--stage", "agent", "--tiny", "--warmup", "1",
                          "--timed", "1", "--updates", "1", "--rows", "3"], cwd=ROOT, check=True, timeout=600,
                         capture_output=True, text=True).stdout
    assert "[profile] 1 updates unprofiled:" in out and "s/update on 1 process(es)" in out
    assert "Self CPU" in out and "aten::mm" in out


def test_the_profile_script_sweeps_the_micro_batches_per_update_on_cpu():
    out = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--stage", "agent", "--tiny", "--warmup", "1",
                          "--timed", "1", "--updates", "0", "--examples", "8", "--ga-sweep", "2", "1"], cwd=ROOT,
                         check=True, timeout=600, capture_output=True, text=True).stdout
    assert "[sweep] 2 micro-batches fetched once" in out
    assert "[sweep] 2 micro-batches/update:" in out and "[sweep] 1 micro-batches/update:" in out
    assert "[sweep] fit:" in out and "Self CPU" not in out
    bad = subprocess.run([sys.executable, "benchmarks/profile_step.py", "--tiny", "--ga-sweep", "4", "3"], cwd=ROOT,
                         timeout=600, capture_output=True, text=True)
    assert bad.returncode == 2 and "each K must divide the largest" in bad.stderr


def test_gpu_gaps_union_of_kernels_and_idle_gaps_by_hand(tmp_path):
    events = [{"ph": "X", "cat": "kernel", "name": "a", "ts": 0, "dur": 100},
              {"ph": "X", "cat": "kernel", "name": "b", "ts": 50, "dur": 100},        # overlaps a: busy 0-150
              {"ph": "X", "cat": "gpu_memcpy", "name": "c", "ts": 450, "dur": 50},    # gap 150-450: 300 us
              {"ph": "X", "cat": "kernel", "name": "d", "ts": 600, "dur": 100},       # gap 500-600: 100 us (< 200)
              {"ph": "X", "cat": "kernel", "name": "ncclDevKernel_AllReduce", "ts": 620, "dur": 30},   # within d
              {"ph": "X", "cat": "cpu_op", "name": "ignored", "ts": 0, "dur": 10_000}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    g = step_anatomy.gpu_gaps(str(path), min_gap_us=200)
    assert g["busy_us"] == 150 + 50 + 100 and g["span_us"] == 700 and g["idle_us"] == 400
    assert g["gaps"] == 1 and g["idle_in_gaps_us"] == 300 and g["largest"] == [(300, "b", "c")]
    assert g["nccl_us"] == 30


def test_peak_sites_replays_allocations_to_the_peak_by_hand():
    frames = {"x": [{"filename": "/site/torch/nn/f.py", "line": 1, "name": "inner"},
                    {"filename": "/repo/toolgen/loss.py", "line": 7, "name": "target_loss"}],
              "y": [{"filename": "/repo/toolgen/step.py", "line": 3, "name": "update"}]}
    trace = [{"action": "alloc", "addr": 1, "size": 100, "frames": frames["x"]},
             {"action": "alloc", "addr": 2, "size": 50, "frames": frames["y"]},
             {"action": "free_requested", "addr": 1, "size": 100},
             {"action": "free_completed", "addr": 1, "size": 100},
             {"action": "alloc", "addr": 3, "size": 30, "frames": frames["y"]}]
    peak, sites = step_anatomy.peak_sites({"device_traces": [trace]}, 0, baseline_bytes=1000)
    assert peak == 1150   # 1000 + 100 + 50; after the free 1000 + 50 + 30 = 1080 never passes it
    assert sites == [(100, "loss.py:7:target_loss"), (50, "step.py:3:update")]

