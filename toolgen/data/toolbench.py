"""Readers for the ToolBench / StableToolBench layouts: catalog, queries, trajectories.

Everything is normalised into three small record types (Api, Query, Trajectory). Bad input raises DataError naming the
file and the record; recoverable problems are returned as (reason, detail) skips for prepare_report.json.
"""

import ast
import glob
import json
import os
import re
from dataclasses import dataclass, field


class DataError(ValueError):
    """Bad input: the message names the file and the record."""


@dataclass(frozen=True)
class Api:
    category: str
    tool: str
    api: str
    tool_description: str = ""
    api_description: str = ""
    required: tuple = ()   # tuple of json strings (hashable); see params()
    optional: tuple = ()

    @property
    def key(self):
        return (self.category, self.tool, self.api)

    def params(self, which):
        return [json.loads(p) for p in getattr(self, which)]


@dataclass
class Query:
    uid: str            # "<file stem>_<query_id>": ToolBench query ids repeat across G1/G2/G3
    text: str
    relevant: list      # [(category, tool, api)] resolved keys
    missing: list       # relevant labels that the catalog lacks, as "tool&&api"
    source: str


@dataclass
class Step:
    function: str                 # ToolBench function name (or "Finish")
    arguments: str | None         # raw JSON text; None when the source truncated it
    thought: str = ""
    observation: str | None = ""  # None: the source recorded no response (NESTFUL); "": none came back or it was cut
    ambiguous: bool = False       # the arguments hold a reference that met several values (ComplexFuncBench)
    failed: bool = False          # a recovery attempt (data/recovery.py): context only, its observation an error


@dataclass
class Trajectory:
    query: str
    steps: list = field(default_factory=list)   # the last step is Finish
    source: str = ""


# ---- ToolBench names ------------------------------------------------------------------------------------------------

def standardize(name):
    """ToolBench's standardize(): the function-name form of a tool or API name."""
    name = re.sub(r"[^\u4e00-\u9fa5a-zA-Z0-9_]", "_", name)
    name = re.sub(r"(_)\1+", "_", name).lower().strip("_")
    if name and name[0].isdigit():
        name = "get_" + name
    return name


def function_name(tool, api):
    """ToolBench's function name of an API: '<api>_for_<tool>', the last 64 characters."""
    api_name = standardize(api)
    if api_name in ("from", "class", "return", "false", "true", "id", "and"):
        api_name = "is_" + api_name
    return f"{api_name}_for_{standardize(tool)}"[-64:]


# ---- catalog --------------------------------------------------------------------------------------------------------

def read_text(path):
    """A UTF-8 text file. Another encoding is a DataError naming the line and the byte (decoding the whole file at
    once, not line by line, keeps the line number exact for every reader)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start}); "
                        "convert the file to UTF-8") from None


def _load_json(path):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


_JSON_TYPES = {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def _expect(value, kind, where):
    """value if it is of the JSON kind (dict, list, str or a tuple of them) the format has there; else a DataError
    naming where, so that a list in place of an object stops with the file and record, not an AttributeError."""
    if not isinstance(value, kind):
        wanted = " or ".join(_JSON_TYPES[k] for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise DataError(f"{where}: expected {wanted}, got {_JSON_TYPES.get(type(value), type(value).__name__)}")
    return value


def _params(record, key, where):
    value = _expect(record.get(key) or [], list, f"{where} '{key}'")
    return tuple(json.dumps(_expect(p, dict, f"{where} {key}[{i}]"), sort_keys=True, ensure_ascii=False)
                 for i, p in enumerate(value))


def api_from_record(record, where, tool_description=""):
    """An Api from an api_list entry / catalog line (category_name, tool_name, api_name, ...)."""
    _expect(record, dict, where)
    for key in ("category_name", "tool_name", "api_name"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise DataError(f"{where}: missing required field '{key}'")
    for key in ("tool_description", "api_description"):
        _expect(record.get(key) or "", str, f"{where} '{key}'")
    return Api(record["category_name"], record["tool_name"], record["api_name"],
               record.get("tool_description") or tool_description, record.get("api_description") or "",
               _params(record, "required_parameters", where), _params(record, "optional_parameters", where))


def read_tools_dir(tools_dir):
    """ToolBench tool documentation: <tools_dir>/<Category>/<tool>.json, each with an api_list."""
    apis = []
    for path in sorted(glob.glob(os.path.join(tools_dir, "*", "*.json"))):
        doc = _expect(_load_json(path), dict, f"{path} (a tool file)")
        category = os.path.basename(os.path.dirname(path))
        tool = doc.get("tool_name") or doc.get("name")
        if not isinstance(tool, str) or not tool or not isinstance(doc.get("api_list"), list):
            raise DataError(f"{path}: a tool file needs 'tool_name' and an 'api_list'")
        for i, api in enumerate(doc["api_list"]):
            _expect(api, dict, f"{path} api_list[{i}]")
            record = {**api, "category_name": category, "tool_name": tool, "api_name": api.get("name"),
                      "api_description": api.get("description")}
            apis.append(api_from_record(record, f"{path} api_list[{i}]", doc.get("tool_description") or ""))
    if not apis:
        raise DataError(f"{tools_dir}: no tool files found (expected <Category>/<tool>.json)")
    return apis


def read_jsonl(path):
    """[(line number, value)] of a JSON Lines file; blank lines are allowed, a bad line is a DataError naming it."""
    out = []
    for n, line in enumerate(read_text(path).split("\n"), 1):   # not splitlines(): U+2028 is valid inside a string
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n}: not valid JSON ({e})") from None
    return out


def read_api_jsonl(path):
    """A JSON Lines catalog: one API object a line (api_from_record's fields)."""
    apis = [api_from_record(record, f"{path} line {n}") for n, record in read_jsonl(path)]
    if not apis:
        raise DataError(f"{path}: empty API catalog")
    return apis


class Catalog:
    """APIs keyed by (category, tool, api), with look-ups by ToolBench function name and by (tool, api)."""

    def __init__(self, apis):
        self.apis = {}
        for api in apis:
            self.apis.setdefault(api.key, api)   # first occurrence wins, as in the derived catalog
        self.by_function = {}
        self.by_tool_api = {}
        for key, api in sorted(self.apis.items()):
            self.by_function.setdefault(function_name(api.tool, api.api), key)
            self.by_tool_api.setdefault((api.tool, api.api), []).append(key)

    def __len__(self):
        return len(self.apis)

    def resolve(self, tool, api, categories=()):
        """The key of a relevant-API label [tool, api]; the query's api_list categories break ties."""
        keys = self.by_tool_api.get((tool, api), [])
        for key in keys:
            if key[0] in categories:
                return key
        return keys[0] if keys else None


# ---- queries --------------------------------------------------------------------------------------------------------

def _check_query(r, where):
    """One query record: query text, query_id, api_list of objects, relevant APIs as [tool, api] pairs of strings."""
    if not isinstance(r.get("query"), str) or "query_id" not in r:
        raise DataError(f"{where}: missing required field 'query' or 'query_id'")
    if not isinstance(r.get("api_list", []), list) or not isinstance(r.get("relevant APIs", []), list):
        raise DataError(f"{where}: 'api_list' and 'relevant APIs' must be lists")
    for j, api in enumerate(r.get("api_list", [])):
        _expect(api, dict, f"{where} api_list[{j}]")
    for label in r.get("relevant APIs", []):
        if not (isinstance(label, list) and len(label) == 2 and all(isinstance(x, str) for x in label)):
            raise DataError(f"{where}: a relevant API must be [tool, api], got {label!r}")


def read_queries(path):
    """A G1_query.json-style file: [{query, query_id, api_list, relevant APIs}]. Returns (stem, records, skips): a
    query_id seen before in the file is skipped (the first is kept), as ids name the test records."""
    records = _expect(_load_json(path), list, f"{path} (a list of queries)")
    if not records:
        raise DataError(f"{path}: no queries")
    kept, skips, seen = [], [], set()
    for i, r in enumerate(records):
        where = f"{path} record {i} (query_id {r.get('query_id') if isinstance(r, dict) else '?'})"
        _check_query(_expect(r, dict, where), where)
        if str(r["query_id"]) in seen:   # as the uid spells it: 7 and "7" are the same query
            skips.append(("duplicate_query_id", where))
            continue
        seen.add(str(r["query_id"]))
        kept.append(r)
    return os.path.splitext(os.path.basename(path))[0], kept, skips


def resolve_queries(stem, records, catalog, path):
    """Query objects from read_queries' records: relevant labels resolved to catalog keys or listed as missing."""
    queries = []
    for r in records:
        categories = {a.get("category_name") for a in r.get("api_list", []) if isinstance(a.get("category_name"), str)}
        relevant, missing = [], []
        for label in r.get("relevant APIs", []):
            key = catalog.resolve(label[0], label[1], categories)
            (relevant if key else missing).append(key if key else f"{label[0]}&&{label[1]}")
        queries.append(Query(f"{stem}_{r['query_id']}", r["query"].strip(), relevant, missing, path))
    return queries


# ---- trajectories ---------------------------------------------------------------------------------------------------

def _split_thought(text):
    text = (text or "").strip()
    return text[len("Thought:"):].strip() if text.startswith("Thought:") else text


def _steps_from_openai_messages(messages, where):
    """train_messages of a DFS answer: assistant messages with function_call, then function results."""
    steps, pending_thought = [], ""
    for i, m in enumerate(messages):
        at = f"{where}[{i}]"
        _expect(m, dict, at)
        _expect(m.get("content") or "", str, f"{at} 'content'")
        if m.get("role") == "assistant":
            call = m.get("function_call")
            thought = " ".join(t for t in (pending_thought, _split_thought(m.get("content"))) if t)
            if not call:               # a thought on its own: it belongs to the next call
                pending_thought = thought
                continue
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise DataError(f"{at}: a function_call without a name")
            arguments = _expect(call.get("arguments", "{}"), (str, type(None)), f"{at} 'arguments'")
            steps.append(Step(call["name"], arguments, thought))
            pending_thought = ""
        elif m.get("role") == "function" and steps:
            steps[-1].observation = m.get("content") or ""
    return steps


_ACTION = re.compile(r"Thought:(?P<thought>.*?)\nAction:\s*(?P<action>[^\n]*)\nAction Input:\s*(?P<input>.*)", re.S)


def _steps_from_conversations(turns, where):
    """ToolLLaMA format: from/value turns; assistant values are 'Thought: ..\\nAction: ..\\nAction Input: ..'."""
    steps = []
    for i, t in enumerate(turns):
        at = f"{where} conversations[{i}]"
        _expect(t, dict, at)
        value = _expect(t.get("value", ""), str, f"{at} 'value'")
        if t.get("from") == "assistant":
            m = _ACTION.search(value)
            if not m:
                raise DataError(f"{at}: an assistant turn without Thought/Action/Action Input")
            steps.append(Step(m["action"].strip(), m["input"].strip(), m["thought"].strip()))
        elif t.get("from") == "function" and steps:
            steps[-1].observation = value
    return steps


_TOOL_MESSAGE = re.compile(r"^\{'name': '(?P<name>[^']*)', 'arguments': '(?P<args>.*?)', 'respon", re.S)


def _tool_step(msg, where):
    """A tooleval tool message: a dict, or its Python repr (cut at 100 characters upstream: then no arguments)."""
    if isinstance(msg, dict):
        arguments = _expect(msg.get("arguments"), (str, type(None)), f"{where} 'arguments'")
        return Step(str(msg.get("name", "")), arguments, "", str(msg.get("response", "")))
    _expect(msg, str, f"{where} 'message'")
    try:
        d = ast.literal_eval(msg)  # a Python dict literal; literal_eval evaluates no code
        name, arguments, response = d["name"], d.get("arguments"), d.get("response", "")
    except (ValueError, SyntaxError, KeyError, TypeError):
        m = _TOOL_MESSAGE.match(msg) or re.match(r"^\{'name': '(?P<name>[^']*)'", msg)
        if not m:
            raise DataError(f"{where}: cannot read the tool call in {msg[:60]!r}") from None
        args = m.groupdict().get("args")
        return Step(m["name"], args.encode().decode("unicode_escape") if args else None)
    return Step(name, _expect(arguments, (str, type(None)), f"{where} 'arguments'"), "", str(response))


def _steps_from_answer_details(tree, where):
    """tooleval answer_details: a tree of {role, message, next}; the last branch is the one that reached the answer."""
    steps, nodes, depth = [], _expect(tree or [], list, f"{where} 'answer_details'"), 0
    while nodes:
        at = f"{where} answer_details node {depth}"
        node = _expect(nodes[0] if depth == 0 else nodes[-1], dict, at)
        if node.get("role") == "tool":
            steps.append(_tool_step(node.get("message"), at))
        nodes, depth = _expect(node.get("next") or [], list, f"{at} 'next'"), depth + 1
    return steps


def _dfs_answer(gen, path):
    """A raw DFS answer file's answer_generation: the last train_messages entry is the path that reached the answer."""
    gen = _expect(gen, dict, f"{path} 'answer_generation'")
    if not gen.get("valid_data") or not gen.get("train_messages"):
        return [], [("invalid_trajectory", path)]
    paths = _expect(gen["train_messages"], list, f"{path} train_messages")
    where = f"{path} train_messages[{len(paths) - 1}]"
    steps = _steps_from_openai_messages(_expect(paths[-1], list, where), where)
    return [Trajectory(_expect(gen.get("query", ""), str, f"{path} 'query'"), steps, path)], []


def _tooleval_answers(data, path):
    """tooleval results: {query id: {query, answer: {answer_details}}}."""
    out = []
    for qid, rec in data.items():
        where = f"{path} record {qid}"
        if not isinstance(rec, dict) or "answer" not in rec or "query" not in rec:
            raise DataError(f"{where}: expected 'query' and 'answer'")
        answer = _expect(rec["answer"], dict, f"{where} 'answer'")
        query = _expect(rec["query"], str, f"{where} 'query'")
        out.append(Trajectory(query, _steps_from_answer_details(answer.get("answer_details", []), where), where))
    return out


def _toolllama_records(data, path):
    """ToolLLaMA training records: [{conversations: [{from, value}]}]; the query is the first user turn."""
    out = []
    for i, rec in enumerate(data):
        where = f"{path} record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise DataError(f"{where}: expected 'conversations'")
        steps = _steps_from_conversations(rec["conversations"], where)   # checks every turn first
        user = next((t.get("value", "") for t in rec["conversations"] if t.get("from") == "user"), "")
        out.append(Trajectory(user.strip(), steps, where))
    return out


def read_trajectories(path):
    """All trajectories in a file, in any of the three formats. Returns (trajectories, skips)."""
    data = _load_json(path)
    skips = []
    if isinstance(data, dict) and "answer_generation" in data:          # raw DFS answer file
        out, skips = _dfs_answer(data["answer_generation"], path)
    elif isinstance(data, dict):                                        # tooleval: {id: {query, answer}}
        out = _tooleval_answers(data, path)
    elif isinstance(data, list):                                        # ToolLLaMA conversations
        out = _toolllama_records(data, path)
    else:
        raise DataError(f"{path}: not a trajectory file (DFS answer, tooleval answers or ToolLLaMA conversations)")
    for t in out:
        t.query = t.query.replace("\nBegin!", "").strip()
    return out, skips
