"""The tools an agent may call: for each tool token its API name, the short JSON documentation shown before the
arguments turn (exactly the text of stages.api_input_doc, as in training), and, where a catalog gives one, the HTTP
spec (method, url or host + endpoint) that executors.HttpExecutor calls.

Read from a prepared folder's tool_tokens.json, from a stage folder (its tool_tokens.json lists token names only, so
the documentation is read from the prepared folder its stage.json names), from a JSON Lines catalog (the
--api-catalog format) or from a ComplexFuncBench / NESTFUL spec file (a JSON list of specs with query_parameters).
"""

import json
import os
import re
from dataclasses import dataclass, field

from toolgen.data import complexfuncbench, gold, nestful, stages
from toolgen.data.agent_sources import prepared_observation
from toolgen.data.toolbench import DataError, read_api_jsonl, read_text
from toolgen.tokens import FINISH, tool_token_names


class AgentError(ValueError):
    """Bad input to the agent (a tools file, an executor mapping, a flag): the message names the file, flag or name."""


@dataclass(frozen=True)
class Tool:
    token: str
    api: str                                    # the API (function) name: what callables, gold calls and specs name
    doc: dict                                   # api_input_doc's fields: name, description, required, optional
    #                                             (and parameters, with --input-doc params)
    spec: dict = field(default_factory=dict)    # HTTP: the catalog record or spec (method, url / host + endpoint)

    @property
    def input_doc(self):
        """The text after ASK_INPUT: json.dumps of the same dict in the same key order gives api_input_doc's string."""
        return json.dumps(self.doc, ensure_ascii=False)

    @property
    def required(self):
        return list(self.doc.get("required") or [])


FINISH_TOOL = Tool(FINISH, "Finish", stages.FINISH_DOC)

# The parts of stages.api_documentation's text that api_input_doc needs (re.S: a description may span lines).
_DOC = re.compile(r"(?:^|\n)API: (?P<api>.*?)\nAPI description: (?P<description>.*?)\n"
                  r"Required parameters: (?P<required>.*?)\nOptional parameters: (?P<optional>.*)$", re.S)
# One "name (type): description" item of a parameter list; the items are joined by ", ".
_PARAM = re.compile(r"(?:^|, )(?P<name>[^,()]+?) \((?P<type>[^()]*)\):")


def parse_documentation(text, where):
    """api_input_doc's fields from the stage-1 documentation text (tool_tokens.json keeps only that text).
    A parameter name with a comma or parenthesis, or a description holding ', x (y):', would be misread; the prepared
    sample and the benchmarks have neither (tested on every sample API)."""
    m = _DOC.search(text or "")
    if m is None:
        raise AgentError(f"{where}: documentation without the 'API: / API description: / Required parameters: / "
                         "Optional parameters:' lines of stages.api_documentation")
    names = lambda part: [] if part.strip() == "none" else [p["name"] for p in _PARAM.finditer(part)]  # noqa: E731
    description = m["description"]
    return {"name": m["api"], "description": "" if description == "none" else description,
            "required": names(m["required"]), "optional": names(m["optional"].split("\n")[0])}


class Toolset:
    """Tools by token, in file order; Finish is not one of them (the loop adds it to the candidates)."""

    def __init__(self, tools, source=""):
        self.tools = {t.token: t for t in tools}
        self.source = source
        self._by_api = {}
        for t in self.tools.values():
            self._by_api.setdefault(t.api, []).append(t)

    def __len__(self):
        return len(self.tools)

    def __contains__(self, token):
        return token in self.tools

    @property
    def tokens(self):
        return list(self.tools)

    def get(self, token):
        return FINISH_TOOL if token == FINISH else self.tools[token]

    def by_api(self, name):
        return list(self._by_api.get(name, []))

    @classmethod
    def from_apis(cls, apis, specs=None, source="", params=False):
        """Api records -> tools named as prepare names them (tool_token_names over the same keys gives the same
        tokens as long as the catalog is the one the model was prepared from). specs: {Api key: raw record};
        params: the input docs of `toolgen-prepare --input-doc params` (the model's data says which it learnt)."""
        unique = {}
        for api in apis:
            unique.setdefault(api.key, api)   # first occurrence wins, as in prepare's Catalog
        names, _ = tool_token_names(list(unique))
        return cls([Tool(names[k], a.api, json.loads(stages.api_input_doc(a, params)), (specs or {}).get(k, {}))
                    for k, a in sorted(unique.items())], source)

    @classmethod
    def load(cls, path, params=False):
        """A prepared or stage folder, tool_tokens.json, a .jsonl catalog or a spec file -> Toolset (AgentError).
        params: a catalog's or spec file's input docs as `--input-doc params` writes them (a prepared folder's
        tool_tokens.json holds the docs its model learnt)."""
        if os.path.isdir(path):
            path = os.path.join(path, "tool_tokens.json")
        if not os.path.isfile(path):
            raise AgentError(f"{path}: not found")
        try:
            if path.endswith(".jsonl"):
                return _from_catalog(path, params)
            data = json.loads(read_text(path))
        except DataError as e:
            raise AgentError(str(e)) from None
        except json.JSONDecodeError as e:
            raise AgentError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict) and isinstance(data.get("tools"), dict):
            return _from_tool_tokens(data, path)
        if isinstance(data, list) and data and all(isinstance(t, str) for t in data):
            return _from_stage_tokens(data, path)
        if isinstance(data, list) and data and all(isinstance(s, dict) and "query_parameters" in s for s in data):
            return _from_specs(data, path, params)
        raise AgentError(f"{path}: not a tool_tokens.json ({{'tokens', 'tools'}}), a stage folder's token list, a "
                         "JSON Lines catalog (.jsonl) or a spec file (a list of specs with 'query_parameters')")


def _from_tool_tokens(data, path, keep=None):
    """A prepared tool_tokens.json. Distractor tokens (in 'tokens', not in 'tools') are not tools: no API behind them."""
    tools = []
    for token, entry in data["tools"].items():
        if keep is not None and token not in keep:
            continue
        where = f"{path} tools[{token!r}]"
        if not isinstance(entry, dict):
            raise AgentError(f"{where}: expected an object")
        doc = entry.get("input_doc") or parse_documentation(entry.get("documentation"), where)
        tools.append(Tool(token, entry.get("api") or doc["name"], doc, entry.get("spec") or {}))
    if not tools:
        raise AgentError(f"{path}: no tools")
    return Toolset(tools, path)


def _prepared_tool_tokens(stage_dir):
    """-> (the tool_tokens.json of the prepared folder a stage trained on, per its stage.json; or None, why not)."""
    stage_json = os.path.join(stage_dir, "stage.json")
    try:
        with open(stage_json, encoding="utf-8") as f:
            data_file = json.load(f)["data_file"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{stage_json} names no data file"
    prepared = os.path.join(os.path.dirname(data_file), "tool_tokens.json")
    return (prepared, "") if os.path.isfile(prepared) else (None, f"{prepared} (named by {stage_json}) is gone")


def trained_input_doc(stage_dir):
    """What the stage's arguments turns showed of the parameters (toolgen-prepare --input-doc): "names" or "params"
    ("names" for data prepared before the option); None when its prepared folder cannot be read."""
    prepared, _ = _prepared_tool_tokens(stage_dir)
    if prepared is None:
        return None
    try:
        with open(prepared, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data.get("input_doc", "names") if isinstance(data, dict) else None


def trained_observation(stage_dir):
    """(characters, order): how the agent examples the stage trained on cut a tool result (toolgen-prepare
    --observation-budget / --observation-order); None when its prepared folder cannot be read."""
    prepared, _ = _prepared_tool_tokens(stage_dir)
    return None if prepared is None else prepared_observation(os.path.dirname(prepared))


def context_budget(given, stage_dir, default=4096):
    """The agent loop's context budget: `given` when set (0: no limit -> None), else the larger of `default` and the
    max_length the stage's agent examples were trained at (its config.json): a smaller budget would cut the histories
    the model learnt from (stages trained on whole trajectories use 8,192)."""
    if given is not None:
        return given or None
    if not stage_dir:
        return default
    try:
        with open(os.path.join(stage_dir, "config.json"), encoding="utf-8") as f:
            trained = json.load(f)["stages"]["agent"]["max_length"]
    except (OSError, ValueError, KeyError, TypeError):
        trained = 0
    return max(default, trained if isinstance(trained, int) and not isinstance(trained, bool) else 0)


def _from_stage_tokens(tokens, path):
    """A stage folder's tool_tokens.json (names only): the documentation comes from the prepared folder of the data
    file its stage.json names."""
    prepared, why = _prepared_tool_tokens(os.path.dirname(path))
    if prepared is None:
        raise AgentError(f"{path} lists token names only and {why}: pass the prepared folder's tool_tokens.json or a "
                         "catalog with --tools")
    with open(prepared, encoding="utf-8") as f:
        return _from_tool_tokens(json.load(f), prepared, keep=set(tokens) - {FINISH})


def _from_catalog(path, params=False):
    """A JSON Lines catalog; each API keeps its line as its HTTP spec (method, url)."""
    apis = read_api_jsonl(path)
    records = [json.loads(line) for line in read_text(path).split("\n") if line.strip()]
    specs = {}
    for api, record in zip(apis, records):
        specs.setdefault(api.key, record)
    return Toolset.from_apis(apis, specs, path, params)


def _from_specs(records, path, params=False):
    """A ComplexFuncBench or NESTFUL spec file, grouped into tools as its reader groups them."""
    cfb = all(str(s.get("endpoint", "")).startswith("/api/v1/") for s in records)
    source = complexfuncbench if cfb else nestful
    try:
        apis = [gold.api_from_spec(s, f"{path} record {i}", source.NAME, source.tool_of) for i, s in enumerate(records)]
    except DataError as e:
        raise AgentError(str(e)) from None
    return Toolset.from_apis(apis, {a.key: s for a, s in zip(apis, records)}, path, params)
