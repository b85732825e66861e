"""Bad input ends in `toolgen-prepare: error: <file> <record>: ...`, never a traceback; duplicate query ids are skipped."""

import json
import os

import pytest

from test_prepare import dfs_answer, tiny_layout, write
from toolgen.data.toolbench import DataError
from toolgen.prepare import SAMPLE_DIR, main, prepare

LATIN1 = "Café".encode("latin-1")   # b"Caf\xe9": not UTF-8


def write_bytes(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def api_line(**fields):
    return json.dumps({"category_name": "Cat", "tool_name": "T", "api_name": "a", **fields}) + "\n"


def query(**fields):
    return {"query": "query number 0", "query_id": 0, "relevant APIs": [["T", "a"]], **fields}


def tooleval(answer_details):
    return {"q1": {"query": "query number 1", "answer": {"answer_details": answer_details}}}


def toolllama(turns):
    return [{"conversations": turns}]


TOOL_FILE = ("toolenv", "tools", "Cat", "t.json")
QUERIES = ("instruction", "G1_query.json")
ANSWER = ("answer", "G1_answer", "1_ChatGPT_DFS_woFilter_w2.json")
CATALOG = ("api.jsonl",)
TOKENS = ("tokens.txt",)
MESSAGES = dfs_answer("a_for_t")["answer_generation"]["train_messages"][0]

# (name, file to write, its content (bytes are written as they are), the error it must give)
CASES = [
    ("non-UTF-8 query file", QUERIES, b'[{"query": "' + LATIN1 + b'", "query_id": 1}]',
     r"G1_query.json line 1: not UTF-8 text \(byte 0xe9 at offset 15\)"),
    ("non-UTF-8 tool file", TOOL_FILE, b'{\n"tool_name": "' + LATIN1 + b'"}', r"t.json line 2: not UTF-8"),
    ("non-UTF-8 catalog line", CATALOG, api_line().encode() + api_line(api_name="b").encode()[:-3] + LATIN1 + b'"}\n',
     r"api.jsonl line 2: not UTF-8"),
    ("non-UTF-8 trajectory", ANSWER, b'{"answer_generation": "' + LATIN1 + b'"}', r"1_ChatGPT_DFS_woFilter_w2.json line 1: not UTF-8"),
    ("non-UTF-8 extra tokens", TOKENS, b"<<T&&x>>\n<<" + LATIN1 + b">>\n", r"tokens.txt line 2: not UTF-8"),
    ("query record is a list", QUERIES, [["query number 0", 0]], r"G1_query.json record 0 \(query_id \?\): expected an object, got a list"),
    ("query file is an object", QUERIES, {"query": "q"}, r"G1_query.json \(a list of queries\): expected a list, got an object"),
    ("api_list entry is a list", QUERIES, [query(api_list=[["Cat", "T", "a"]])],
     r"G1_query.json record 0 \(query_id 0\) api_list\[0\]: expected an object, got a list"),
    ("relevant API label is not two strings", QUERIES, [query(**{"relevant APIs": [[["T"], "a"]]})],
     r"G1_query.json record 0 \(query_id 0\): a relevant API must be \[tool, api\]"),
    ("tool file is a list", TOOL_FILE, [{"tool_name": "T"}], r"t.json \(a tool file\): expected an object, got a list"),
    ("tool api entry is a list", TOOL_FILE, {"tool_name": "T", "api_list": [["a"]]},
     r"t.json api_list\[0\]: expected an object, got a list"),
    ("catalog line is a list", CATALOG, api_line() + '["Cat", "T", "b"]\n', r"api.jsonl line 2: expected an object, got a list"),
    ("parameter is a string", CATALOG, api_line(required_parameters=["city"]),
     r"api.jsonl line 1 required_parameters\[0\]: expected an object, got a string"),
    ("parameters are an object", CATALOG, api_line(optional_parameters={"city": "x"}),
     r"api.jsonl line 1 'optional_parameters': expected a list, got an object"),
    ("description is an object", CATALOG, api_line(api_description={"en": "x"}),
     r"api.jsonl line 1 'api_description': expected a string, got an object"),
    ("train_messages entry is a list", ANSWER,
     {"answer_generation": {"valid_data": True, "query": "q", "train_messages": [[MESSAGES[0], ["assistant", "hi"]]]}},
     r"1_ChatGPT_DFS_woFilter_w2.json train_messages\[0\]\[1\]: expected an object, got a list"),
    ("train_messages path is an object", ANSWER,
     {"answer_generation": {"valid_data": True, "query": "q", "train_messages": [{"role": "user"}]}},
     r"1_ChatGPT_DFS_woFilter_w2.json train_messages\[0\]: expected a list, got an object"),
    ("observation is an object", ANSWER, {"answer_generation": {"valid_data": True, "query": "q", "train_messages": [
        MESSAGES[:2] + [{"role": "function", "content": {"ok": 1}}]]}},
     r"train_messages\[0\]\[2\] 'content': expected a string, got an object"),
    ("arguments are an object", ANSWER, {"answer_generation": {"valid_data": True, "query": "q", "train_messages": [
        [{"role": "assistant", "content": "", "function_call": {"name": "a_for_t", "arguments": {"x": 1}}}]]}},
     r"train_messages\[0\]\[0\] 'arguments': expected a string or null, got an object"),
    ("answer_generation is a list", ANSWER, {"answer_generation": [1]}, r"'answer_generation': expected an object, got a list"),
    ("conversation turn is a list", ANSWER, toolllama([{"from": "user", "value": "q"}, ["assistant", "x"]]),
     r"1_ChatGPT_DFS_woFilter_w2.json record 0 conversations\[1\]: expected an object, got a list"),
    ("conversation value is a list", ANSWER, toolllama([{"from": "user", "value": ["q"]}]),
     r"record 0 conversations\[0\] 'value': expected a string, got a list"),
    ("answer_details node is a list", ANSWER, tooleval([{"role": "system", "next": [["tool", "x"]]}]),
     r"1_ChatGPT_DFS_woFilter_w2.json record q1 answer_details node 1: expected an object, got a list"),
    ("answer_details is an object", ANSWER, tooleval({"role": "system"}),
     r"record q1 'answer_details': expected a list, got an object"),
    ("tool message is a list", ANSWER, tooleval([{"role": "tool", "message": ["a_for_t"]}]),
     r"record q1 answer_details node 0 'message': expected a string, got a list"),
    ("tooleval answer is a list", ANSWER, {"q1": {"query": "q", "answer": []}},
     r"record q1 'answer': expected an object, got a list"),
]


@pytest.mark.parametrize("name, where, content, error", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_naming_file_and_record(tmp_path, name, where, content, error):
    root = tiny_layout(tmp_path / "in", answer=dfs_answer("a_for_t"))
    path = os.path.join(root, *where)
    if isinstance(content, bytes):
        write_bytes(path, content)
    else:
        write(path, content)
    args = ["--toolbench", root, "--out", str(tmp_path / "out")]
    args += {CATALOG: ["--api-catalog", path], TOKENS: ["--extra-tokens", path]}.get(where, [])
    with pytest.raises(SystemExit) as e:
        main(args)
    assert isinstance(e.value.code, str) and e.value.code.startswith("toolgen-prepare: error: "), e.value.code
    assert path in e.value.code   # the whole path, so the file can be found
    with pytest.raises(DataError, match=error):
        prepare(root, **{CATALOG: {"api_catalog": path}, TOKENS: {"extra_tokens": path}}.get(where, {}))


def test_good_input_passes_the_checks_under_strict(tmp_path):
    root = tiny_layout(tmp_path / "in", answer=dfs_answer("a_for_t"))
    main(["--toolbench", root, "--out", str(tmp_path / "out"), "--strict"])
    assert prepare(SAMPLE_DIR, strict=True)["prepare_report.json"]["skipped"] == {}


def test_duplicate_query_ids_in_a_file_are_skipped_first_kept_or_strict_error(tmp_path):
    queries = [{"query": f"query number {i}", "query_id": i, "relevant APIs": [["T", "a"]]} for i in range(10)]
    queries.insert(3, {"query": "a second query number 1", "query_id": "1", "relevant APIs": [["T", "a"]]})
    root = tiny_layout(tmp_path, queries=queries)
    out = prepare(root)
    report = out["prepare_report.json"]
    assert report["skipped"] == {"duplicate_query_id": 1}
    assert report["skipped_examples"]["duplicate_query_id"] == [f"{root}/instruction/G1_query.json record 3 (query_id 1)"]
    assert report["read"][f"queries:{root}/instruction/G1_query.json"] == 11     # read: every record of the file
    texts = {ex["messages"][0]["content"] for ex in out["retrieval_training.json"]} | \
        {r["messages"][0]["content"] for r in out["retrieval_test.json"]}
    assert "query number 1" in texts and "a second query number 1" not in texts  # the first is kept
    with pytest.raises(DataError, match=r"G1_query.json record 3 \(query_id 1\): duplicate query id \(skipping is off"):
        prepare(root, strict=True)
    # the same id in two files is not a duplicate: ids are prefixed by their file
    write(os.path.join(root, "instruction", "G2_query.json"), queries[:3])
    assert prepare(root)["prepare_report.json"]["skipped"] == {"duplicate_query_id": 1}
