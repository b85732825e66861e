"""Shared fixtures: the shipped sample prepared once, a tiny model built in code, in-process stage runs."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "toolbench")
TINY = os.path.join(ROOT, "launch", "configs", "tiny.yaml")
sys.path.insert(0, ROOT)
os.environ.setdefault("TOOLGEN_CACHE", os.path.join(ROOT, ".cache", "toolgen"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

needs_shared = pytest.mark.skipif(not os.path.isdir(SHARED), reason=f"real ToolBench data not found at {SHARED}")


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    from toolgen.data import SAMPLE_DIR
    from toolgen.prepare import prepare, write_atomically
    out = str(tmp_path_factory.mktemp("data"))
    write_atomically(prepare(SAMPLE_DIR), out)
    return out


def run_stage(stage, output_dir, data_dir, *overrides, resume=False, overwrite=False, config=TINY):
    """Run toolgen/train.py in this process; reset accelerate's singletons so the next run starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    from toolgen import train
    argv = ["--stage", stage, "--config", config, "--output-dir", str(output_dir), "--data-dir", str(data_dir)]
    argv += [a for o in overrides for a in ("--set", o)] + (["--resume"] if resume else []) + (["--overwrite"] if overwrite else [])
    try:
        return train.main(argv)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, sample_data):
    """The three stages on the tiny model, once for the session: {output_dir, data_dir, histories}."""
    out = tmp_path_factory.mktemp("pipeline")
    histories = {}
    for stage in ("memorization", "retrieval", "agent"):
        _, histories[stage] = run_stage(stage, out, sample_data)
    return {"output_dir": str(out), "data_dir": sample_data, "histories": histories}


def weather_call(city, temp):
    """A gold call of a hand-made held-out request (agent_e2e_test.json's record layout)."""
    args = {"city": city}
    return {"name": "current weather", "token": "<<SkyCast&&current weather>>", "tool": "current weather",
            "api": "current weather", "label": "", "arguments": args, "resolved_arguments": args, "has_response": True,
            "response": {"temp": temp}, "used_paths": [], "ambiguous_references": []}
