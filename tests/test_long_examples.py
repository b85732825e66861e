"""stages.<stage>.long_examples=fit: an agent trajectory longer than max_length also trains the answers the cut drops,
on its history shortened as the agent loop shortens it (collate.fitted_tail)."""

import json
import os

import pytest

from conftest import run_stage
from test_training import tiny_with_tokens
from toolgen.collate import IGNORE, _tokenized_with_cut, stage_dataset, tokenize_messages
from toolgen.config import ConfigError, load_config
from toolgen.observations import SHORT_OBSERVATION

OBSERVATION = "flight " * 120   # not JSON: shortened to its first SHORT_OBSERVATION characters + " [cut]"


def trajectory():
    return [{"role": "user", "content": "book me the cheapest flight", "loss": False},
            {"role": "user", "content": "Generate the action.", "loss": False},
            {"role": "assistant", "content": "search flights", "loss": True},
            {"role": "tool", "content": OBSERVATION, "loss": False},
            {"role": "user", "content": "Generate the action.", "loss": False},
            {"role": "assistant", "content": "book the first one", "loss": True},
            {"role": "tool", "content": "booked", "loss": False},
            {"role": "assistant", "content": "done: booked", "loss": True}]


def targets(labels):
    return [t for t in labels if t != IGNORE]


def test_the_tail_trains_the_cut_answers_on_the_history_the_loop_shows(sample_data):
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    messages = trajectory()
    full = tokenize_messages(tokenizer, messages)
    first_turn = len(tokenize_messages(tokenizer, messages[:4])["input_ids"])   # through the long observation
    max_length = first_turn + 3   # the second and third answers are cut off
    out = _tokenized_with_cut(tokenizer, [messages], max_length, "document")
    assert out["tail"] == [False, True] and out["targets_cut"] == [0, 0]
    start, tail = ({"input_ids": out["input_ids"][k], "labels": out["labels"][k]} for k in (0, 1))
    # the start: the first max_length tokens, trained on the first answer only (the second straddles the cut)
    assert start["input_ids"] == full["input_ids"][:max_length]
    first = tokenize_messages(tokenizer, messages[:3])
    assert targets(start["labels"]) == targets(first["labels"])
    # the tail: the observation shortened as the loop shortens it, trained on the two answers the start cut
    shown = [dict(m) for m in messages]
    shown[3]["content"] = OBSERVATION[:SHORT_OBSERVATION] + " [cut]"
    later = [dict(m, loss=m["loss"] and i > 3) for i, m in enumerate(shown)]
    assert tail == tokenize_messages(tokenizer, later) and len(tail["input_ids"]) <= max_length
    # every answer trained once: the start's targets and the tail's are the whole conversation's
    assert len(targets(start["labels"])) + len(targets(tail["labels"])) == len(targets(full["labels"]))
    assert out["targets"] == [out["targets"][0], 0] and out["targets"][0] > 0


def test_what_cannot_fit_stays_cut_and_counted(sample_data):
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    messages = trajectory()
    no_tools = [m for m in messages if m["role"] != "tool"]
    no_tools[0] = dict(no_tools[0], content="book me the cheapest flight " * 40)
    short = len(tokenize_messages(tokenizer, no_tools[:3])["input_ids"]) + 2
    # no tool result to shorten: exactly what "cut" gives
    assert _tokenized_with_cut(tokenizer, [no_tools], short, "document") == \
        _tokenized_with_cut(tokenizer, [no_tools], short)
    # a request alone longer than the stubs leave room for: the start only, the rest counted as cut
    stubbed = [dict(m, content="x" * 3000) if i == 0 else m for i, m in enumerate(messages)]
    budget = len(tokenize_messages(tokenizer, stubbed[:3])["input_ids"]) + 3
    out = _tokenized_with_cut(tokenizer, [stubbed], budget, "document")
    assert out["tail"] == [False] and out["targets_cut"][0] == out["targets"][0] - len(targets(out["labels"][0])) > 0


def test_stage_dataset_counts_the_tails_and_the_config_names_the_choice(sample_data, tmp_path):
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    messages = trajectory()
    max_length = len(tokenize_messages(tokenizer, messages[:4])["input_ids"]) + 3
    (tmp_path / "agent_tuning.json").write_text(json.dumps([{"messages": messages}, {"messages": messages[:3]}]))
    _, cut = stage_dataset(tokenizer, str(tmp_path / "agent_tuning.json"), max_length)
    assert cut["examples"] == 2 and cut["examples_cut"] == 1 and cut["examples_fitted"] == 0
    dataset, fit = stage_dataset(tokenizer, str(tmp_path / "agent_tuning.json"), max_length, long_examples="fit")
    assert len(dataset) == 3 and dataset.column_names == ["input_ids", "labels"]
    assert fit == dict(cut, examples_cut=0, target_tokens_cut=0, examples_fitted=1)
    with pytest.raises(ConfigError, match="stages.agent.long_examples='trim': allowed values are cut, fit"):
        load_config(None, ["stages.agent.long_examples=trim"])


def test_a_fitted_stage_trains_and_says_so(sample_data, tmp_path, capsys):
    """Any stage takes the setting (the trajectories here stand in a memorization file, a stage without a parent)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "tool_tokens.json").write_text(open(os.path.join(sample_data, "tool_tokens.json")).read())
    (data / "tool_memorization.json").write_text(json.dumps([{"messages": trajectory()}] * 4))
    _, tokenizer, _, _ = tiny_with_tokens(sample_data)
    max_length = len(tokenize_messages(tokenizer, trajectory()[:4])["input_ids"]) + 3
    _, history = run_stage("memorization", tmp_path / "run", data, f"stages.memorization.max_length={max_length}",
                           "stages.memorization.long_examples=fit", "stages.memorization.max_steps=2")
    said = capsys.readouterr().out
    assert "4 long examples also train the answers max_length cut off" in said and "are cut off" not in said
    assert len(history) == 2
