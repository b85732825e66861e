"""What --toolbench DIR finds: the ToolBench raw layout, StableToolBench's solvable_queries, a JSON Lines catalog."""

import glob
import json
import os

import pytest

from conftest import SHARED, needs_shared
from toolgen.data.toolbench import DataError
from toolgen.prepare import detect_layout, find_inputs, main, prepare


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def api(tool, name, category="Cat"):
    return {"category_name": category, "tool_name": tool, "api_name": name, "api_description": f"does {name}",
            "required_parameters": [], "optional_parameters": []}


def queries(tool, name, n=6, api_list=()):
    return [{"query": f"please {name} number {i}", "query_id": i, "api_list": list(api_list),
             "relevant APIs": [[tool, name]]} for i in range(n)]


def stabletoolbench(root):
    """StableToolBench's solvable_queries: queries with api_lists, id lists beside them, a 3-query excerpt."""
    write(os.path.join(root, "solvable_queries", "test_instruction", "G1_instruction.json"),
          queries("T", "a", api_list=[api("T", "a"), api("T", "b")]))
    write(os.path.join(root, "solvable_queries", "test_query_ids", "G1_instruction.json"), [0, 1, 2, 3, 4, 5])
    write(os.path.join(root, "solvable_queries_example", "test_instruction", "G1_instruction.json"),
          queries("T", "a", n=3, api_list=[api("T", "a")]))
    return str(root)


def catalog_lines(*apis):
    return "".join(json.dumps(a) + "\n" for a in apis)


def test_stabletoolbench_queries_found_and_their_api_lists_are_the_catalog(tmp_path):
    root = stabletoolbench(tmp_path)
    found = detect_layout(root)
    assert found["queries"] == [os.path.join(root, "solvable_queries", "test_instruction", "G1_instruction.json")]
    out = prepare(root)
    report = out["prepare_report.json"]
    assert report["catalog_source"] == "queries' api_lists" and len(out["tool_memorization.json"]) == 2
    assert sum(v for k, v in report["read"].items() if k.startswith("queries:")) == 6   # not the example's 3


def test_a_jsonl_catalog_in_the_folder_is_the_catalog(tmp_path):
    root = stabletoolbench(tmp_path)
    write(os.path.join(root, "apis.jsonl"), catalog_lines(api("T", "a"), api("T", "b"), api("T", "c")))
    report = prepare(root)["prepare_report.json"]
    assert report["catalog_source"] == os.path.join(root, "apis.jsonl") and report["read"]["apis"] == 3
    # two JSON Lines files: which one is the catalog is not guessed ...
    write(os.path.join(root, "notes.jsonl"), catalog_lines(api("U", "x")))
    with pytest.raises(DataError, match=r"2 JSON Lines files and no catalog.jsonl.*apis.jsonl.*notes.jsonl"):
        prepare(root)
    # ... unless one is called catalog.jsonl; under data/ counts too
    write(os.path.join(root, "data", "catalog.jsonl"), catalog_lines(api("T", "a")))
    os.remove(os.path.join(root, "notes.jsonl"))
    os.remove(os.path.join(root, "apis.jsonl"))
    assert find_inputs(root)["api_catalog"] == os.path.join(root, "data", "catalog.jsonl")


def test_catalog_file_beats_tool_folder_and_flags_beat_what_is_found(tmp_path):
    root = str(tmp_path)
    write(os.path.join(root, "toolenv", "tools", "Cat", "t.json"), {"tool_name": "T", "api_list": [
        {"name": "a", "description": "does a"}, {"name": "b", "description": "does b"}]})
    write(os.path.join(root, "instruction", "G1_query.json"), queries("T", "a"))
    write(os.path.join(root, "catalog.jsonl"), catalog_lines(api("T", "a")))
    assert prepare(root)["prepare_report.json"]["read"]["apis"] == 1              # the catalog file
    tools = os.path.join(root, "toolenv", "tools")
    inputs = find_inputs(root, tools_dir=tools)
    assert inputs["tools_dir"] == tools and inputs["api_catalog"] is None        # a given tool folder wins
    assert prepare(root, tools_dir=tools)["prepare_report.json"]["read"]["apis"] == 2


def test_nothing_found_names_the_layouts_looked_for(tmp_path):
    write(os.path.join(tmp_path, "solvable_queries", "test_query_ids", "G1_instruction.json"), [1, 2])
    with pytest.raises(DataError) as e:
        prepare(str(tmp_path))
    for layout in ("no tool folder, API catalog or query file", "ToolBench raw", "toolenv/tools", "instruction/*.json",
                   "StableToolBench", "solvable_queries/test_instruction/*.json", "catalog.jsonl"):
        assert layout in str(e.value)
    with pytest.raises(SystemExit, match="toolgen-prepare: error: .*not a folder"):
        main(["--toolbench", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])


def test_cli_prints_what_it_found_before_working(tmp_path, capsys):
    root = stabletoolbench(tmp_path / "in")
    write(os.path.join(root, "answer", "G1_answer", "broken.json"), "{broken")
    with pytest.raises(SystemExit, match="broken.json: not valid JSON"):
        main(["--toolbench", root, "--out", str(tmp_path / "out")])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["toolgen-prepare: catalog file: none", "toolgen-prepare: tool folder: none",
                     f"toolgen-prepare: 1 query file: {root}/solvable_queries/test_instruction/G1_instruction.json "
                     "(the catalog: their api_lists)",
                     f"toolgen-prepare: 1 trajectory file: {root}/answer/G1_answer/broken.json"]


@needs_shared
def test_real_stabletoolbench_folder():
    root = os.path.join(SHARED, "stabletoolbench")
    inputs = find_inputs(root)
    assert inputs["queries"] == sorted(glob.glob(os.path.join(root, "solvable_queries", "test_instruction", "*.json")))
    assert len(inputs["queries"]) == 4 and inputs["api_catalog"] is None and inputs["tools_dir"] is None
    report = prepare(root)["prepare_report.json"]
    assert sum(v for k, v in report["read"].items() if k.startswith("queries:")) == 546
    assert report["catalog_source"] == "queries' api_lists"


@needs_shared
def test_real_toolbench_example_and_derived_catalog():
    found = find_inputs(os.path.join(SHARED, "toolbench", "data_example"))
    assert len(found["queries"]) == 5 and len(found["trajectories"]) == 15
    found = find_inputs(os.path.join(SHARED, "derived"))
    assert found["api_catalog"] == os.path.join(SHARED, "derived", "api_docs_from_test_queries.jsonl")
