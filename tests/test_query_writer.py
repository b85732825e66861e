"""The llm view: parsing and filtering a writer's answer, the cache (a rerun needs no model), the tiny model end to end,
errors before any work; the offline GGUF forms of models.resolve_model."""

import json
import os

import pytest

from toolgen import models, prepare as prepare_mod, query_writer
from toolgen.data import SAMPLE_DIR, stages
from toolgen.data.toolbench import Api, DataError
from toolgen.prepare import main, prepare
from toolgen.query_writer import WriterOptions, filter_answer, longest_common_run, parse_answer

WEATHER = Api("Weather", "SkyCast", "current weather", "Forecasts and current conditions.",
              "Current conditions for a city.", (json.dumps({"name": "city", "default": "Lisbon"}),))
# The tiny random model writes random tokens: sampled (greedy repeats newlines only), short, in big batches.
TINY = WriterOptions("tiny", queries_per_api=3, temperature=1.0, seed=0, max_new_tokens=24, batch_size=36)


def test_parse_answer_strips_numbers_bullets_and_quotes():
    answer = ('Here are 3 requests:\n\n1. What is the weather in Oslo right now?\n2) "Is it raining in Rome?"\n'
              '- **Do I need an umbrella in Paris today?**\n* How warm is it in Cairo?\n# 3. Windy in Bergen?\n')
    assert parse_answer(answer) == ["Here are 3 requests:", "What is the weather in Oslo right now?",
                                    "Is it raining in Rome?", "Do I need an umbrella in Paris today?",
                                    "How warm is it in Cairo?", "Windy in Bergen?"]
    assert parse_answer("") == parse_answer("\n \n") == []


def test_filter_drops_and_counts_each_reason():
    answer = "\n".join([
        "Sure! Here are some requests:",                     # preamble
        "1. SkyCast current weather",                        # only the tool and API names
        "2. Current conditions for a city.",                 # the description verbatim
        "3. current conditions for a city please",           # 4 of 5 words in one span of the documentation
        "4. Weather?",                                       # too short
        "5. What's the weather like in Lisbon right now?",   # kept
        "6. what's the weather like in lisbon right now",    # the same request again
        "7. Should I take a jacket in Oslo tonight?",        # kept
        "8. Is it sunny in Madrid at the moment?",           # kept
        "9. Any rain in Porto this afternoon?",              # a fourth: beyond n = 3
        "GET https://api.skycast.example/now?city=Oslo",     # an HTTP call, not a user's request
        "These are all different requests for the weather.",    # the writer commenting its answer
        "Here's how you can ask for it"])
    kept, drops = filter_answer(WEATHER, answer, 3)
    assert kept == ["What's the weather like in Lisbon right now?", "Should I take a jacket in Oslo tonight?",
                    "Is it sunny in Madrid at the moment?"]
    assert dict(drops) == {"preamble": 3, "only_api_name": 1, "copies_documentation": 2, "too_short": 1,
                           "duplicate": 1, "beyond_n": 1, "code_or_url": 1}
    assert filter_answer(WEATHER, "  \n\n", 3) == ([], {"empty_answer": 1})
    assert filter_answer(WEATHER, "current weather", 3)[1] == {"only_api_name": 1}


def test_longest_common_run_by_hand():
    assert longest_common_run("a b c d".split(), "x a b c y d".split()) == 3
    assert longest_common_run("a b".split(), "b a".split()) == 1
    assert longest_common_run([], "a".split()) == 0


def test_prompt_is_the_documentation_and_the_instruction():
    messages = query_writer.writer_prompt(WEATHER, 4)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert stages.api_documentation(WEATHER) in messages[1]["content"]
    assert "Write 4 different requests" in messages[1]["content"] and "Do not name the tool" in messages[1]["content"]
    assert query_writer.prompt_hash(messages) != query_writer.prompt_hash(query_writer.writer_prompt(WEATHER, 3))


def no_model(*args, **kwargs):
    raise AssertionError("the model was loaded although every answer is in the cache")


def test_tiny_writer_is_filtered_counted_and_cached(tmp_path, monkeypatch):
    out = prepare(SAMPLE_DIR, views=("llm",), writer=TINY)
    records, report = out["query_writer.jsonl"], out["prepare_report.json"]
    assert [tuple(r["api"]) for r in records] == sorted(tuple(r["api"]) for r in records) and len(records) == 72
    assert {r["model"] for r in records} == {"tiny"}
    writer = report["query_writer"]
    assert writer["generated"] == 72 and writer["from_cache"] == 0 and writer["dropped"]   # random text: some dropped
    kept = [q for r in records for q in r["queries"]]
    assert writer["queries_kept"] == len(kept) == report["views"]["llm"]["examples"] > 0
    lines = sum(len(parse_answer(r["answer"])) for r in records)
    empty = sum(not parse_answer(r["answer"]) for r in records)
    assert lines + empty == len(kept) + sum(writer["dropped"].values())    # every line kept or counted
    monkeypatch.setattr(query_writer, "load_writer", no_model)
    again = prepare(SAMPLE_DIR, views=("llm",), writer=TINY, writer_cache=records)
    assert again["prepare_report.json"]["query_writer"]["from_cache"] == 72
    assert {k: v for k, v in again.items() if k != "prepare_report.json"} == \
        {k: v for k, v in out.items() if k != "prepare_report.json"}
    cached_only = prepare(SAMPLE_DIR, views=("llm",), writer=WriterOptions(queries_per_api=3), writer_cache=records)
    assert cached_only["retrieval_training.json"] == out["retrieval_training.json"]
    with pytest.raises(DataError, match=r"72 of 72 APIs have no cached query-writer answer .*--query-writer MODEL"):
        prepare(SAMPLE_DIR, views=("llm",), writer=WriterOptions(queries_per_api=2), writer_cache=records)


def test_cli_rerun_with_the_same_folder_is_identical_without_the_model(tmp_path, monkeypatch):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--views", "name,llm", "--query-writer", "tiny", "--writer-temperature", "1",
            "--writer-max-new-tokens", "24", "--writer-batch-size", "36"]
    main(argv)
    first = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert "query_writer.jsonl" in first and len(first["query_writer.jsonl"].splitlines()) == 72
    monkeypatch.setattr(query_writer, "load_writer", no_model)
    main(argv)
    report = json.loads((out / "prepare_report.json").read_bytes())
    assert report["query_writer"]["from_cache"] == 72
    again = {n: (out / n).read_bytes() for n in os.listdir(out)}
    assert {n: b for n, b in again.items() if n != "prepare_report.json"} == \
        {n: b for n, b in first.items() if n != "prepare_report.json"}
    main(["--out", str(out), "--views", "name"])   # no llm view this time: the cache is kept, not lost
    assert (out / "query_writer.jsonl").read_bytes() == first["query_writer.jsonl"]


def test_writer_command_writes_a_cache_that_prepare_takes(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "answers.jsonl"
    argv = ["--model", "tiny", "--out", str(cache), "--temperature", "1", "--max-new-tokens", "24", "--batch-size", "36"]
    query_writer.main(argv)
    assert "72 APIs (0 already there, 72 written)" in capsys.readouterr().out
    monkeypatch.setattr(query_writer, "load_writer", no_model)
    query_writer.main(argv)   # a second run finds every answer: a stopped run continues where it stopped
    assert "72 APIs (72 already there, 0 written)" in capsys.readouterr().out
    assert len(cache.read_text().splitlines()) == 72
    main(["--out", str(tmp_path / "out"), "--views", "llm", "--query-writer-cache", str(cache)])
    report = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert report["query_writer"]["from_cache"] == 72 and report["query_writer"]["models"] == ["tiny"]


def test_a_model_that_cannot_load_stops_before_any_work(tmp_path, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started")
    monkeypatch.setattr(prepare_mod, "find_inputs", no_work)
    monkeypatch.setattr(prepare_mod, "prepare", no_work)
    with pytest.raises(SystemExit, match="--query-writer no-such-org/no-such-model: cannot load the model"):
        main(["--out", str(tmp_path / "out"), "--views", "llm", "--query-writer", "no-such-org/no-such-model"])
    with pytest.raises(SystemExit, match="--query-writer gguf-file:/no/such.gguf: cannot load"):
        main(["--out", str(tmp_path / "out"), "--views", "llm", "--query-writer", "gguf-file:/no/such.gguf"])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):   # a writer without the llm view is a mistake, not ignored
        main(["--out", str(tmp_path / "out"), "--query-writer", "tiny"])


def test_a_bad_cache_line_names_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"api": ["C", "T", "a"], "model": "m", "prompt_hash": "h", "answer": "x"}\n{"api": 3}\n')
    with pytest.raises(DataError, match=r"c.jsonl line 2: not a query-writer record"):
        query_writer.read_cache(str(path))
    path.write_text('{"api": [["C"], "T", "a"], "model": "m", "prompt_hash": "h", "answer": "x"}\n')   # not hashable
    with pytest.raises(DataError, match=r"c.jsonl line 1: not a query-writer record"):
        query_writer.read_cache(str(path))


def test_gguf_forms_resolve_offline(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(models, "gguf_folder", lambda src, name, folder: calls.append((src, name, folder)) or folder)
    gguf = tmp_path / "My-Model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    folder = models.resolve_model(f"gguf-file:{gguf}")
    assert calls[-1][:2] == (str(tmp_path), "My-Model.Q4.gguf") and os.path.basename(folder).startswith("gguf-my-model")
    assert models.resolve_model(f"gguf-file:{gguf}") == folder   # the same file: the same cache folder
    with pytest.raises(OSError, match="gguf-file:/no/such.gguf: no such file"):
        models.resolve_model("gguf-file:/no/such.gguf")
    with pytest.raises(OSError, match="expected gguf:PACKAGE/FILE.gguf"):
        models.resolve_model("gguf:no_such_package/x.gguf")
    if models.importlib.util.find_spec(models.SMOLLM2_PACKAGE) is not None:
        models.resolve_model(f"gguf:{models.SMOLLM2_PACKAGE}/{models.SMOLLM2_GGUF}")
        assert calls[-1][1] == models.SMOLLM2_GGUF
