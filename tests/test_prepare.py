"""Data preparation: counts, split, tokens, bad input, atomic output — on the shipped sample and the real data."""

import ast
import glob
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, needs_shared
from toolgen.data.toolbench import Catalog, DataError, function_name, read_api_jsonl
from toolgen.prepare import OUTPUT_FILES, SAMPLE_DIR, main, prepare, write_atomically
from toolgen.tokens import FINISH, tool_token_names


def load(d, name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)


def test_sample_counts_match_inputs(sample_data):
    apis = read_api_jsonl(os.path.join(SAMPLE_DIR, "catalog.jsonl"))
    memorization = load(sample_data, "tool_memorization.json")
    assert len(memorization) == len(apis) == 72           # one example per API of the catalog
    tokens = load(sample_data, "tool_tokens.json")
    assert len(tokens["tokens"]) == len(apis) + 1 and tokens["tokens"][-1] == FINISH
    assert {ex["target"] for ex in memorization} == set(tokens["tokens"][:-1])
    # every relevant API of every training query is a target, once per (query, API)
    names = {(v["tool"], v["api"]): t for t, v in tokens["tools"].items()}
    test_texts = {r["messages"][0]["content"] for r in load(sample_data, "retrieval_test.json")}
    test_texts |= {r["messages"][0]["content"] for r in load(sample_data, "retrieval_val.json")}   # held out too
    expected = []
    for path in sorted(glob.glob(os.path.join(SAMPLE_DIR, "instruction", "*.json"))):
        for q in json.load(open(path)):
            if q["query"] not in test_texts:
                expected += [(q["query"], names[tuple(label)]) for label in q["relevant APIs"]]
    got = [(ex["messages"][0]["content"], ex["target"]) for ex in load(sample_data, "retrieval_training.json")]
    assert sorted(got) == sorted(expected)
    report = load(sample_data, "prepare_report.json")
    assert report["written"]["tool_memorization.json"] == 72
    assert report["read"]["trajectories"] == len(load(sample_data, "agent_tuning.json")) + len(load(sample_data, "agent_test.json"))


def test_the_sample_is_data_read_like_a_users_inputs():
    """catalog.jsonl (the --api-catalog format, the same reader), queries and trajectories as files; no generator."""
    package = os.path.dirname(SAMPLE_DIR)
    assert sorted(os.listdir(SAMPLE_DIR)) == ["answer", "catalog.jsonl", "instruction"]
    assert not glob.glob(os.path.join(SAMPLE_DIR, "**", "*.py"), recursive=True)
    assert not {"make_sample.py", "sample_catalog.py"} & set(os.listdir(package))
    with open(os.path.join(SAMPLE_DIR, "catalog.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 72 and all({"category_name", "tool_name", "api_name", "api_description", "tool_description",
                                     "required_parameters", "optional_parameters", "method"} <= set(r) for r in lines)
    report = prepare(SAMPLE_DIR)["prepare_report.json"]
    assert report["catalog_source"] == os.path.join(SAMPLE_DIR, "catalog.jsonl") and report["skipped"] == {}


def imports_of(path):
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_imports_run_one_way():
    """models.py takes SAMPLE_DIR from toolgen.data (not from the prepare command); data/ imports no command."""
    from toolgen.data import SAMPLE_DIR as from_data
    assert from_data == SAMPLE_DIR
    assert "toolgen.prepare" not in imports_of(os.path.join(ROOT, "toolgen", "models.py"))
    for path in glob.glob(os.path.join(ROOT, "toolgen", "data", "*.py")):
        assert not imports_of(path) & {"toolgen.prepare", "toolgen.train", "toolgen.models", "toolgen.evaluate"}, path


def test_split_has_no_overlap_and_is_deterministic(sample_data):
    train_q = {ex["messages"][0]["content"] for ex in load(sample_data, "retrieval_training.json")}
    test_q = {r["messages"][0]["content"] for r in load(sample_data, "retrieval_test.json")}
    assert train_q and test_q and not train_q & test_q
    agent_train = {ex["query"] for ex in load(sample_data, "agent_tuning.json")}
    agent_test = {ex["query"] for ex in load(sample_data, "agent_test.json")}
    assert agent_train and agent_test and not agent_train & agent_test
    assert not agent_train & test_q and not agent_test & train_q
    again = prepare(SAMPLE_DIR)
    assert again["retrieval_test.json"] == load(sample_data, "retrieval_test.json")
    other = prepare(SAMPLE_DIR, seed=1)
    assert other["retrieval_test.json"] != again["retrieval_test.json"]


def test_tokens_unique_and_round_trip(sample_data):
    tokens = load(sample_data, "tool_tokens.json")
    assert len(set(tokens["tokens"])) == len(tokens["tokens"])
    catalog = Catalog(read_api_jsonl(os.path.join(SAMPLE_DIR, "catalog.jsonl")))
    names, _ = tool_token_names(list(catalog.apis))
    for key, token in names.items():
        info = tokens["tools"][token]
        assert (info["category"], info["tool"], info["api"]) == key
        assert token.startswith("<<") and token.endswith(">>") and token.isascii()


def test_token_collisions_resolved_deterministically():
    keys = [("Data", "Météo", "now"), ("Weather", "Météo", "now"), ("Weather", "Meteo", "now"), ("Data", "Meteo", "now")]
    names, collisions = tool_token_names(keys)
    assert len(set(names.values())) == 4 and all(t.isascii() for t in names.values())
    assert names[("Data", "Meteo", "now")] == "<<Meteo&&now>>"              # sorted first keeps the plain name
    assert names[("Data", "Météo", "now")] == "<<Meteo@Data&&now>>"
    assert names[("Weather", "Meteo", "now")] == "<<Meteo@Weather&&now>>"
    assert names[("Weather", "Météo", "now")] == "<<Meteo@Weather&&now#2>>"
    assert len(collisions) == 3
    assert tool_token_names(list(reversed(keys)))[0] == names


def test_function_names_match_toolbench():
    assert function_name("transitaires", "transitaires") == "transitaires_for_transitaires"
    assert function_name("20211230 testing upload swagger", "/open-api/v1.0/indoor-air-quality/iot/") == \
        "0_indoor_air_quality_iot_for_get_20211230_testing_upload_swagger"
    assert function_name("My Tool", "id") == "is_id_for_my_tool"


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def tiny_layout(root, queries=None, answer=None):
    write(os.path.join(root, "toolenv", "tools", "Cat", "t.json"), {"tool_name": "T", "api_list": [
        {"name": "a", "description": "does a", "required_parameters": [], "optional_parameters": []}]})
    write(os.path.join(root, "instruction", "G1_query.json"), queries if queries is not None else
          [{"query": f"query number {i}", "query_id": i, "api_list": [], "relevant APIs": [["T", "a"]]} for i in range(10)])
    if answer is not None:
        write(os.path.join(root, "answer", "G1_answer", "1_ChatGPT_DFS_woFilter_w2.json"), answer)
    return str(root)


def dfs_answer(function):
    return {"answer_generation": {"valid_data": True, "query": "query number 1", "train_messages": [[
        {"role": "user", "content": "query number 1"},
        {"role": "assistant", "content": "Thought: call it", "function_call": {"name": function, "arguments": "{}"}},
        {"role": "function", "name": function, "content": "ok"},
        {"role": "assistant", "content": "", "function_call": {"name": "Finish", "arguments": "{\"return_type\": \"give_answer\"}"}}]]}}


def test_malformed_json_names_the_file(tmp_path):
    root = tiny_layout(tmp_path)
    write(os.path.join(root, "instruction", "G1_query.json"), "[{not json")
    with pytest.raises(DataError, match="G1_query.json: not valid JSON"):
        prepare(root)


def test_missing_field_names_file_and_record(tmp_path):
    root = tiny_layout(tmp_path, queries=[{"query": "q", "query_id": 1}, {"query_id": 7}])
    with pytest.raises(DataError, match=r"G1_query.json record 1 \(query_id 7\): missing required field 'query'"):
        prepare(root)
    tiny_layout(root)   # valid queries again; now a catalog line without api_name
    write(os.path.join(root, "api.jsonl"), '{"category_name": "C", "tool_name": "T"}\n')
    with pytest.raises(DataError, match=r"api.jsonl line 1: missing required field 'api_name'"):
        prepare(root, api_catalog=os.path.join(root, "api.jsonl"))


def test_relevant_api_not_in_catalog_is_skipped_and_counted_or_strict_error(tmp_path):
    queries = [{"query": f"q {i}", "query_id": i, "relevant APIs": [["T", "a"], ["Nope", "x"]]} for i in range(5)]
    root = tiny_layout(tmp_path, queries=queries)
    report = prepare(root)["prepare_report.json"]
    assert report["skipped"]["relevant_api_not_in_catalog"] == 5
    with pytest.raises(DataError, match=r"query G1_query_0: Nope&&x: relevant api not in catalog"):
        prepare(root, strict=True)


def test_trajectory_with_unknown_function_is_skipped_or_strict_error(tmp_path):
    root = tiny_layout(tmp_path, answer=dfs_answer("no_such_function"))
    out = prepare(root)
    assert out["prepare_report.json"]["skipped"]["trajectory_calls_unknown_function"] == 1
    assert out["agent_tuning.json"] == [] and out["agent_test.json"] == []
    with pytest.raises(DataError, match="1_ChatGPT_DFS_woFilter_w2.json: no_such_function: trajectory calls unknown function"):
        prepare(root, strict=True)
    good = prepare(tiny_layout(tmp_path, answer=dfs_answer("a_for_t")))
    assert len(good["agent_tuning.json"]) + len(good["agent_test.json"]) == 1


def test_empty_inputs_are_errors(tmp_path):
    with pytest.raises(DataError, match="no tool folder, API catalog or query file"):
        prepare(str(tmp_path))
    root = tiny_layout(tmp_path, queries=[])
    with pytest.raises(DataError, match="G1_query.json: no queries"):
        prepare(root)


def test_failed_run_leaves_no_output(tmp_path, capsys):
    root = tiny_layout(tmp_path / "in")
    write(os.path.join(root, "answer", "G1_answer", "9_x.json"), "{broken")
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="9_x.json: not valid JSON"):
        main(["--toolbench", root, "--out", str(out)])
    assert not out.exists() or os.listdir(out) == []


def test_a_failed_write_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    """Make each write and each rename fail in turn: the folder is all old files until the one that is all new."""
    out = str(tmp_path / "out")
    write_atomically({name: {"old": name} for name in OUTPUT_FILES}, out)
    new = prepare(tiny_layout(tmp_path / "in"))
    for target in ("dump", "replace"):
        for k in range(1, 20):
            real, calls = getattr(json if target == "dump" else os, target), []

            def fail_on_kth(*args, real=real, calls=calls, k=k, **kwargs):
                calls.append(args)
                if len(calls) == k:
                    raise OSError(f"{target} {k} failed")
                return real(*args, **kwargs)
            monkeypatch.setattr(json if target == "dump" else os, target, fail_on_kth)
            try:
                write_atomically(new, out)
                failed = False
            except OSError:
                failed = True
            finally:
                monkeypatch.undo()
            assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES), (target, k)
            assert sorted(os.listdir(tmp_path)) == ["in", "out"], (target, k)   # no temporary folder left
            contents = [load(out, name) for name in OUTPUT_FILES]
            if failed:
                assert contents == [{"old": name} for name in OUTPUT_FILES], (target, k)
            else:
                assert contents == [json.loads(json.dumps(new[name])) for name in OUTPUT_FILES], (target, k)
                write_atomically({name: {"old": name} for name in OUTPUT_FILES}, out)
                break
        else:
            raise AssertionError(f"{target}: the write never succeeded")


def test_out_folder_with_other_files_is_refused(tmp_path):
    out = tmp_path / "out"
    write(str(out / "my_notes.txt"), "keep me")
    with pytest.raises(SystemExit, match="my_notes.txt.*replaced whole"):
        main(["--toolbench", tiny_layout(tmp_path / "in"), "--out", str(out)])
    assert os.listdir(out) == ["my_notes.txt"]
    main(["--toolbench", str(tmp_path / "in"), "--out", str(tmp_path / "fresh")])
    main(["--toolbench", str(tmp_path / "in"), "--out", str(tmp_path / "fresh")])   # a former --out: replaced
    assert sorted(os.listdir(tmp_path / "fresh")) == sorted(OUTPUT_FILES)


def test_cli_on_the_shipped_sample(tmp_path):
    out = tmp_path / "prepared"
    result = subprocess.run([sys.executable, "-m", "toolgen.prepare", "--out", str(out)], cwd=ROOT,
                            capture_output=True, text=True, check=True)
    assert "tool_memorization.json 72" in result.stdout
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)


def real_prepare(**options):
    queries = sorted(glob.glob(os.path.join(SHARED, "stabletoolbench", "solvable_queries", "test_instruction", "*.json")))
    trajectories = [os.path.join(SHARED, p) for p in (
        "toolbench/toolbench/tooleval/results/default_evalset", "toolbench/data_example/answer",
        "stabletoolbench/data_example/answer", "derived/toolllama_format_from_data_examples.json")]
    return prepare(api_catalog=os.path.join(SHARED, "derived", "api_docs_from_test_queries.jsonl"), queries=queries,
                   trajectories=trajectories, **options)


@needs_shared
def test_real_data_counts_and_report_accounts_for_every_record():
    out = real_prepare()
    report = out["prepare_report.json"]
    assert report["read"]["apis"] == 2490 and len(out["tool_memorization.json"]) == 2490
    assert len(set(out["tool_tokens.json"]["tokens"])) == 2491
    n_queries = sum(v for k, v in report["read"].items() if k.startswith("queries:"))
    assert n_queries == 546
    seen = {r["query_id"] for r in out["retrieval_test.json"]}
    train_pairs = len(out["retrieval_training.json"])
    assert len(seen) + len({ex["messages"][0]["content"] for ex in out["retrieval_training.json"]}) <= n_queries
    assert train_pairs > len(seen)
    trajectory_skips = sum(v for k, v in report["skipped"].items() if k.startswith(("trajectory_", "duplicate_", "invalid_")))
    written = len(out["agent_tuning.json"]) + len(out["agent_test.json"])
    assert report["read"]["trajectories"] == written + trajectory_skips
    assert written > 100


@needs_shared
def test_real_catalog_function_names_match_the_derived_file():
    with open(os.path.join(SHARED, "derived", "api_docs_from_test_queries.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert all(function_name(r["tool_name"], r["api_name"]) == r["toolbench_function_name"] for r in rows)


@pytest.mark.parametrize("views", [1, 2])
def test_synthetic_queries_cover_every_api_and_stay_out_of_the_test_split(views):
    plain, synth = prepare(SAMPLE_DIR), prepare(SAMPLE_DIR, synthetic_queries=views)
    added = [ex for ex in synth["retrieval_training.json"] if ex.get("synthetic")]
    apis = [ex["target"] for ex in plain["tool_memorization.json"]]
    assert sorted(ex["target"] for ex in added) == sorted(apis * views)   # `views` queries per catalog API
    assert [ex for ex in synth["retrieval_training.json"] if not ex.get("synthetic")] == plain["retrieval_training.json"]
    assert synth["retrieval_test.json"] == plain["retrieval_test.json"]   # the test split does not move
    test_texts = {r["messages"][0]["content"] for r in plain["retrieval_test.json"]}
    assert not test_texts & {ex["messages"][0]["content"] for ex in added}
    if views == 2:   # the second view never names the tool
        tools = {t: v["tool"] for t, v in synth["tool_tokens.json"]["tools"].items()}
        second = [ex for ex in added if ex["messages"][0]["content"].startswith("Can you help me with this:")]
        assert len(second) == len(apis)
        assert all(tools[ex["target"]] not in ex["messages"][0]["content"] for ex in second)
