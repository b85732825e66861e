"""The agent loop on the tiny model (random weights: only the structure of what comes out is checked, never its
quality) and the toolgen-agent command: its errors name the flag or file before the model loads, and a real run."""

import json
import os

import pytest
import torch

from toolgen import agent as agent_mod
from toolgen import agent_cli
from toolgen.agent import Agent, AgentConfig, ModelPolicy, Transcript
from toolgen.tokens import FINISH
from toolgen.executors import CallableExecutor
from toolgen.toolset import Toolset

# ---- the tiny model (random weights): structure only -----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_stage(tmp_path_factory, sample_data):
    """A stage folder as train.py leaves it (adapter, tool_tokens.json names, stage.json naming its data file), with an
    untrained LoRA on the tiny model: what load_stage and --model read, built in seconds without training."""
    import dataclasses

    from toolgen import models
    from toolgen.config import LoraConfig, ModelConfig
    cfg = ModelConfig(name="tiny", dtype="float32")
    with open(os.path.join(sample_data, "tool_tokens.json")) as f:
        tokens = json.load(f)["tokens"]
    tokenizer, model, ids = models.load_base(cfg, tokens)
    model = models.lora_model(model, LoraConfig(r=4, alpha=8, dropout=0.0), ids)
    out = tmp_path_factory.mktemp("stage") / "agent_tuning"
    model.save_pretrained(str(out / "adapter"), save_embedding_layers=False)
    (out / "tool_tokens.json").write_text(json.dumps(tokens))
    (out / "stage.json").write_text(json.dumps({"stage": "agent", "model": dataclasses.asdict(cfg),
                                                "data_file": os.path.join(sample_data, "agent_tuning.json")}))
    return str(out)


def roles(t):
    """The role sequence the steps of a transcript imply (think=True)."""
    out = ["system", "user"]
    for s in t.steps:
        out += ["assistant", "user", "assistant", "user", "assistant"] + ["user", "assistant"] * s.repaired
        out += [] if s.token == FINISH else ["tool"]
    return out


def test_tiny_model_loop_structure_and_transcript_round_trip(tiny_stage, tmp_path):
    from toolgen.models import load_stage
    tokenizer, model, _ = load_stage(tiny_stage)
    tools = Toolset.load(tiny_stage)
    executor = CallableExecutor({"<<SkyCast&&current weather>>": lambda city: {"temp_c": 21},
                                 "geocode address": lambda address: {"lat": 34.7, "lon": 135.5}})
    config = AgentConfig(max_steps=2, think=True, thought_tokens=8, argument_tokens=12, context_budget=2048)
    t = Agent(ModelPolicy(model.eval(), tokenizer), tools, executor, config).run("What is the weather in Osaka?")
    assert t.stop_reason in ("finish", "max_steps") and 1 <= len(t.steps) <= 2
    assert (t.stop_reason == "finish") == (t.steps[-1].token == FINISH)
    assert all(s.token in tools.tokens + [FINISH] for s in t.steps)   # constrained: a real tool or Finish, always
    assert [m["role"] for m in t.messages] == roles(t)
    assert t.invalid_json == sum(not s.valid_json for s in t.steps) and t.repairs == sum(s.repaired for s in t.steps)
    t.save(tmp_path / "t.json")
    assert Transcript.load(tmp_path / "t.json") == t


def test_run_e2e_with_forced_outputs_on_the_tiny_model(tiny_stage, monkeypatch):
    """The real model's log-probs reach tool_scorer, which forces the actions; the text turns are forced too: the
    replayed transcripts are then known, and so are the metrics."""
    from toolgen.agent import run_e2e
    from toolgen.agent_metrics import e2e_metrics
    from toolgen.data.gold import GoldCall, GoldRequest
    from toolgen.models import load_stage
    tokenizer, model, _ = load_stage(tiny_stage)
    plan = {"weather?": ["<<SkyCast&&current weather>>", FINISH], "geo?": ["<<GeoCoder&&geocode address>>"] * 2}
    texts = iter(['{"city": "Osaka"}', '{"return_type": "give_answer", "final_answer": "21"}',
                  '{"address": "1 Main St"}', '{"address": "1 Main St"}'])
    monkeypatch.setattr(agent_mod.decoding, "generate_text", lambda *a, **k: next(texts))
    seen = []
    def scorer(request, thought, candidates, logprobs):
        seen.append(logprobs)
        want = plan[request].pop(0)
        return torch.tensor([1.0 if c == want else 0.0 for c in candidates])
    requests = [GoldRequest("w", "weather?", [GoldCall("current weather", {"city": "osaka"})], None, "hand"),
                GoldRequest("g", "geo?", [GoldCall("geocode address", {"address": "1 main st"})], None, "hand")]
    transcripts, m = run_e2e(model.eval(), tokenizer, requests, tiny_stage, AgentConfig(max_steps=2), tool_scorer=scorer)
    # the model's log-probs over the 72 tools + Finish (a slice of the vocabulary's distribution)
    assert all(lp.shape == (73,) and lp.max() <= 0 and torch.logsumexp(lp, 0) <= 1e-4 for lp in seen)
    assert [s.observation for s in transcripts[0].steps] == ['{"result": "$var1$", "note": "no recorded response"}',
                                                             None]
    assert "every expected call named geocode address (1) was already made" in transcripts[1].steps[1].observation
    assert m == e2e_metrics(transcripts, requests)
    # tool choice: w right, right; g right, then wrong (its only gold call is already matched)
    assert (m["e2e/success_rate"], m["e2e/call_accuracy"], m["e2e/tool_selection_accuracy"]) == (0.5, 1.0, 0.75)
    assert (m["e2e/finish_rate"], m["e2e/avg_steps"], m["e2e/invalid_json_rate"]) == (0.5, 2.0, 0.0)


def cli_error(argv):
    with pytest.raises(SystemExit) as e:
        agent_cli.main(argv)
    message = str(e.value.code)
    assert message.startswith("toolgen-agent: error: ") and "\n" not in message and "Traceback" not in message
    return message


def test_cli_errors_name_the_flag_or_file_before_loading(tiny_stage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent_cli_bad_tools.py").write_text("FUNCTIONS = {'<<Nope&&x>>': print}\nNOT_A_DICT = 3\n")
    q = ["--query", "hi"]
    assert "--model nope: not a finished stage folder (stage.json is missing)" in cli_error(["--model", "nope"] + q)
    assert "--max-steps 0: must be positive" in cli_error(["--model", tiny_stage, "--max-steps", "0"] + q)
    assert "--observation-chars 0: must be positive" in cli_error(
        ["--model", tiny_stage, "--observation-chars", "0"] + q)
    assert "missing.json: not found" in cli_error(["--model", tiny_stage, "--tools", "missing.json"] + q)
    assert "--executor 'bogus': use callables" in cli_error(["--model", tiny_stage, "--executor", "bogus"] + q)
    assert "cannot import no_such_module_xyz" in cli_error(["--model", tiny_stage, "--executor",
                                                            "callables:no_such_module_xyz.F"] + q)
    message = cli_error(["--model", tiny_stage, "--executor", "callables:agent_cli_bad_tools.FUNCTIONS"] + q)
    assert "callables:agent_cli_bad_tools.FUNCTIONS: unknown tool(s): <<Nope&&x>>" in message
    assert "expected a mapping" in cli_error(["--model", tiny_stage, "--executor",
                                              "callables:agent_cli_bad_tools.NOT_A_DICT"] + q)
    assert "replay:gone.json: No such file" in cli_error(["--model", tiny_stage, "--executor", "replay:gone.json"] + q)
    assert "has no HTTP specs" in cli_error(["--model", tiny_stage, "--executor", "http"] + q)
    assert "--query: give the request" in cli_error(["--model", tiny_stage])
    assert "the folder" in cli_error(["--model", tiny_stage, "--transcript", "no/such/dir/t.json"] + q)
    # replay:FILE of a benchmark record: its input is the request when --query is not given
    (tmp_path / "record.json").write_text(json.dumps({"input": " Weather in Osaka? ", "output": [
        {"name": "current weather", "arguments": {"city": "Osaka"}}, {"name": "var_result", "arguments": {}}]}))
    tools, executor, request = agent_cli.check_inputs(agent_cli.parse_args(
        ["--model", tiny_stage, "--executor", "replay:record.json", "--observation-chars", "50",
         "--observation-order", "ids-first"]))
    assert request == "Weather in Osaka?" and [c.name for c in executor.gold] == ["current weather"] and len(tools) == 72
    assert (executor.chars, executor.order) == (50, "ids-first")   # replayed responses cut as the loop's own
    assert "--observation-order: invalid choice: 'bfs'" in cli_error(
        ["--model", tiny_stage, "--observation-order", "bfs"] + q)


def test_cli_cuts_observations_as_the_stage_was_trained(tiny_stage, sample_data, tmp_path, monkeypatch):
    """Without --observation-chars/--observation-order the command cuts tool results as the stage's prepared folder
    did (its prepare_report.json); the flags override it; a stage whose data is gone gets 2000 and document."""
    import shutil
    monkeypatch.chdir(tmp_path)
    data, stage = tmp_path / "data", tmp_path / "agent_tuning"
    data.mkdir()
    shutil.copytree(tiny_stage, stage)
    shutil.copy(os.path.join(sample_data, "tool_tokens.json"), data / "tool_tokens.json")
    (data / "prepare_report.json").write_text(json.dumps({"observation_budget": 321, "observation_order": "ids-first"}))
    info = json.loads((stage / "stage.json").read_text())
    (stage / "stage.json").write_text(json.dumps({**info, "data_file": str(data / "agent_tuning.json")}))
    (tmp_path / "record.json").write_text(json.dumps([{"name": "current weather", "arguments": {"city": "Osaka"}}]))
    replay = ["--model", str(stage), "--executor", "replay:record.json", "--query", "Weather in Osaka?"]
    _, executor, _ = agent_cli.check_inputs(agent_cli.parse_args(replay))
    assert (executor.chars, executor.order) == (321, "ids-first")
    _, executor, _ = agent_cli.check_inputs(agent_cli.parse_args(replay + ["--observation-chars", "50",
                                                                           "--observation-order", "document"]))
    assert (executor.chars, executor.order) == (50, "document")
    shutil.rmtree(data)
    tools = ["--tools", os.path.join(sample_data, "tool_tokens.json")]
    _, executor, _ = agent_cli.check_inputs(agent_cli.parse_args(replay + tools))
    assert (executor.chars, executor.order) == (2000, "document")


def test_cli_runs_the_loop_with_callables(tiny_stage, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent_cli_tools.py").write_text("FUNCTIONS = {'current weather': lambda city: {'temp_c': 21}}\n")
    agent_cli.main(["--model", tiny_stage, "--query", "What is the weather in Osaka?", "--executor",
                    "callables:agent_cli_tools.FUNCTIONS", "--max-steps", "2", "--think", "--thought-tokens", "4",
                    "--argument-tokens", "8", "--observation-chars", "100", "--observation-order", "ids-first",
                    "--transcript", "t.json"])
    out = capsys.readouterr().out
    t = Transcript.load("t.json")
    assert f"stop: {t.stop_reason}" in out and 1 <= len(t.steps) <= 2 and t.settings["think"] is True
    assert t.settings["observation_chars"] == 100 and t.settings["observation_order"] == "ids-first"
    assert (t.settings["max_steps"], t.settings["argument_tokens"], t.request) == (2, 8, "What is the weather in Osaka?")
