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
    observation: str = ""


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

def _load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def _params(record, key, where):
    value = record.get(key) or []
    if not isinstance(value, list):
        raise DataError(f"{where}: '{key}' must be a list")
    return tuple(json.dumps(p, sort_keys=True, ensure_ascii=False) for p in value)


def api_from_record(record, where, tool_description=""):
    """An Api from an api_list entry / catalog line (category_name, tool_name, api_name, ...)."""
    for key in ("category_name", "tool_name", "api_name"):
        if not isinstance(record.get(key), str) or not record[key]:
            raise DataError(f"{where}: missing required field '{key}'")
    return Api(record["category_name"], record["tool_name"], record["api_name"],
               record.get("tool_description") or tool_description, record.get("api_description") or "",
               _params(record, "required_parameters", where), _params(record, "optional_parameters", where))


def read_tools_dir(tools_dir):
    """ToolBench tool documentation: <tools_dir>/<Category>/<tool>.json, each with an api_list."""
    apis = []
    for path in sorted(glob.glob(os.path.join(tools_dir, "*", "*.json"))):
        doc = _load_json(path)
        category = os.path.basename(os.path.dirname(path))
        tool = doc.get("tool_name") or doc.get("name")
        if not tool or not isinstance(doc.get("api_list"), list):
            raise DataError(f"{path}: a tool file needs 'tool_name' and an 'api_list'")
        for i, api in enumerate(doc["api_list"]):
            record = {**api, "category_name": category, "tool_name": tool, "api_name": api.get("name"),
                      "api_description": api.get("description")}
            apis.append(api_from_record(record, f"{path} api_list[{i}]", doc.get("tool_description") or ""))
    if not apis:
        raise DataError(f"{tools_dir}: no tool files found (expected <Category>/<tool>.json)")
    return apis


def read_api_jsonl(path):
    apis = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {n}: not valid JSON ({e})") from None
            apis.append(api_from_record(record, f"{path} line {n}"))
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

def read_queries(path):
    """A G1_query.json-style file: [{query, query_id, api_list, relevant APIs}]. Returns (stem, raw records)."""
    records = _load_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path}: expected a list of queries")
    if not records:
        raise DataError(f"{path}: no queries")
    for i, r in enumerate(records):
        where = f"{path} record {i} (query_id {r.get('query_id') if isinstance(r, dict) else '?'})"
        if not isinstance(r, dict) or not isinstance(r.get("query"), str) or "query_id" not in r:
            raise DataError(f"{where}: missing required field 'query' or 'query_id'")
        if not isinstance(r.get("api_list", []), list) or not isinstance(r.get("relevant APIs", []), list):
            raise DataError(f"{where}: 'api_list' and 'relevant APIs' must be lists")
    return os.path.splitext(os.path.basename(path))[0], records


def resolve_queries(stem, records, catalog, path):
    queries = []
    for i, r in enumerate(records):
        categories = {a.get("category_name") for a in r.get("api_list", [])}
        relevant, missing = [], []
        for label in r.get("relevant APIs", []):
            if not (isinstance(label, list) and len(label) == 2):
                raise DataError(f"{path} record {i} (query_id {r['query_id']}): a relevant API must be [tool, api], got {label!r}")
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
    for m in messages:
        if m.get("role") == "assistant":
            call = m.get("function_call")
            thought = " ".join(t for t in (pending_thought, _split_thought(m.get("content"))) if t)
            if not call:               # a thought on its own: it belongs to the next call
                pending_thought = thought
                continue
            if not isinstance(call, dict) or "name" not in call:
                raise DataError(f"{where}: a function_call without a name")
            steps.append(Step(call["name"], call.get("arguments", "{}"), thought))
            pending_thought = ""
        elif m.get("role") == "function" and steps:
            steps[-1].observation = m.get("content") or ""
    return steps


_ACTION = re.compile(r"Thought:(?P<thought>.*?)\nAction:\s*(?P<action>[^\n]*)\nAction Input:\s*(?P<input>.*)", re.S)


def _steps_from_conversations(turns, where):
    """ToolLLaMA format: from/value turns; assistant values are 'Thought: ..\\nAction: ..\\nAction Input: ..'."""
    steps = []
    for t in turns:
        if t.get("from") == "assistant":
            m = _ACTION.search(t.get("value", ""))
            if not m:
                raise DataError(f"{where}: an assistant turn without Thought/Action/Action Input")
            steps.append(Step(m["action"].strip(), m["input"].strip(), m["thought"].strip()))
        elif t.get("from") == "function" and steps:
            steps[-1].observation = t.get("value", "")
    return steps


_TOOL_MESSAGE = re.compile(r"^\{'name': '(?P<name>[^']*)', 'arguments': '(?P<args>.*?)', 'respon", re.S)


def _steps_from_answer_details(tree, where):
    """tooleval answer_details: a tree of {role, message, next}; tool messages may be cut at 100 characters."""
    steps, node = [], tree[0] if tree else None
    while node is not None:
        if node.get("role") == "tool":
            msg = node.get("message")
            if isinstance(msg, dict):
                steps.append(Step(msg.get("name", ""), msg.get("arguments"), "", str(msg.get("response", ""))))
            else:
                try:
                    d = ast.literal_eval(msg)  # a Python dict literal; literal_eval evaluates no code
                    steps.append(Step(d["name"], d.get("arguments"), "", str(d.get("response", ""))))
                except (ValueError, SyntaxError, KeyError, TypeError):
                    m = _TOOL_MESSAGE.match(msg) or re.match(r"^\{'name': '(?P<name>[^']*)'", msg)
                    if not m:
                        raise DataError(f"{where}: cannot read the tool call in {msg[:60]!r}") from None
                    args = m.groupdict().get("args")
                    steps.append(Step(m["name"], args.encode().decode("unicode_escape") if args else None))
        nxt = node.get("next") or []
        node = nxt[-1] if nxt else None   # the last branch is the one that reached the answer
    return steps


def read_trajectories(path):
    """All trajectories in a file, in any of the three formats. Returns (trajectories, skips)."""
    data = _load_json(path)
    out, skips = [], []
    if isinstance(data, dict) and "answer_generation" in data:          # raw DFS answer file
        gen = data["answer_generation"]
        if not gen.get("valid_data") or not gen.get("train_messages"):
            return [], [("invalid_trajectory", path)]
        steps = _steps_from_openai_messages(gen["train_messages"][-1], path)
        out.append(Trajectory(gen.get("query", ""), steps, path))
    elif isinstance(data, dict):                                        # tooleval: {id: {query, answer}}
        for qid, rec in data.items():
            where = f"{path} record {qid}"
            if not isinstance(rec, dict) or "answer" not in rec or "query" not in rec:
                raise DataError(f"{where}: expected 'query' and 'answer'")
            out.append(Trajectory(rec["query"], _steps_from_answer_details(rec["answer"].get("answer_details", []), where), where))
    elif isinstance(data, list):                                        # ToolLLaMA conversations
        for i, rec in enumerate(data):
            where = f"{path} record {i}"
            if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
                raise DataError(f"{where}: expected 'conversations'")
            user = next((t.get("value", "") for t in rec["conversations"] if t.get("from") == "user"), "")
            out.append(Trajectory(user.strip(), _steps_from_conversations(rec["conversations"], where), where))
    else:
        raise DataError(f"{path}: not a trajectory file (DFS answer, tooleval answers or ToolLLaMA conversations)")
    for t in out:
        t.query = t.query.replace("\nBegin!", "").strip()
    return out, skips
