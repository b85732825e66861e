"""Executors: what runs a tool call of the agent loop.

An executor has check(toolset), called before the run (bad input stops there, not at step 5), and call(tool,
arguments) -> a JSON value or a text, or raises (ToolError or anything else): the loop turns the error into the
observation and goes on. The loop runs every call in a worker thread with the per-call timeout (call_with_timeout).

  CallableExecutor  {tool token or API name: Python callable}, called with the arguments as keywords
  HttpExecutor      RapidAPI / OpenAPI-style specs (method, url or host + endpoint), urllib only, the key from the
                    environment
  ReplayExecutor    a benchmark request's gold calls: a matching call returns the recorded response (ComplexFuncBench),
                    or a placeholder naming its variable where none was recorded (NESTFUL)
  NoExecutor        calls nothing: shows what the model would call
"""

import importlib
import json
import os
import re
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request

from toolgen.data import references
from toolgen.data.gold import OBSERVATION_BUDGET, GoldCall
from toolgen.data.matching import match_call, mismatch
from toolgen.toolset import AgentError

MAX_RESPONSE_BYTES = 1 << 20   # an HTTP body beyond 1 MiB is cut: the observation is truncated far below that anyway


class ToolError(Exception):
    """A call that failed in a known way: the message becomes the observation's error."""


class CallTimeout(ToolError):
    pass


class Prepared(str):
    """Observation text an executor has already cut (the replay keeps the paths later calls read): shown as it is."""


def call_with_timeout(fn, timeout):
    """fn() in a daemon worker thread, waiting at most `timeout` seconds. Python cannot stop a thread: a call that
    hangs is abandoned (it runs on in the background, its result discarded), and a daemon thread does not keep the
    process alive at exit. Exceptions of fn are re-raised here."""
    box = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:   # noqa: BLE001  (handed to the caller, whatever it is)
            box["error"] = e

    worker = threading.Thread(target=work, name="toolgen-tool-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CallTimeout(f"timed out after {timeout:g} s (the call was abandoned)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _names(items, limit=10):
    items = sorted(items)
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def resolve_names(keys, toolset, what):
    """{key: token} for keys that are tool tokens or API names; AgentError listing the unknown (and ambiguous) keys and
    the known names, before any call is made."""
    out, unknown, ambiguous = {}, [], []
    for key in keys:
        if key in toolset:
            out[key] = key
            continue
        found = toolset.by_api(key)
        if len(found) == 1:
            out[key] = found[0].token
        elif found:
            ambiguous.append(f"{key} ({', '.join(t.token for t in found)})")
        else:
            unknown.append(key)
    if unknown or ambiguous:
        problems = ([f"unknown tool(s): {', '.join(map(str, unknown))}"] if unknown else []) + (
            [f"API names of several tools (use the token): {'; '.join(ambiguous)}"] if ambiguous else [])
        known = {t.token for t in toolset.tools.values()} | {t.api for t in toolset.tools.values()}
        raise AgentError(f"{what}: {'; '.join(problems)}. Known tools of {toolset.source or 'the toolset'}: "
                         f"{_names(known)}")
    return out


class NoExecutor:
    def check(self, toolset):
        pass

    def call(self, tool, arguments):
        raise ToolError("no executor was given: the call was not made")


class CallableExecutor:
    """{tool token or API name: callable}. The callable gets the arguments as keywords; what it returns is the
    observation (JSON-encoded, or its str() when it is not JSON). A tool without a callable is an error observation."""

    def __init__(self, functions, what="CallableExecutor"):
        if not isinstance(functions, dict) or not all(callable(f) for f in functions.values()):
            raise AgentError(f"{what}: expected a mapping of tool token or API name -> callable")
        self.functions, self.what, self.bound = dict(functions), what, None

    def check(self, toolset):
        self.bound = {token: self.functions[key] for key, token in
                      resolve_names(self.functions, toolset, self.what).items()}

    def call(self, tool, arguments):
        fn = (self.bound or {}).get(tool.token)
        if fn is None:
            raise ToolError(f"no function is mapped to {tool.token}")
        return fn(**arguments)


# ---- HTTP ------------------------------------------------------------------------------------------------------------

def _is_rapidapi(spec):
    return "rapidapi.com" in str(spec.get("host") or spec.get("url") or "")


class HttpExecutor:
    """RapidAPI / OpenAPI-style specs: {"method", "url"} or {"method", "host", "endpoint"}; `{name}` in the url takes
    that argument, GET sends the rest as the query string, other methods as a JSON body. RapidAPI hosts get the
    X-RapidAPI-Key (from RAPIDAPI_KEY) and X-RapidAPI-Host headers. specs: {token or API name: spec}; None: each
    tool's catalog record. opener: urllib.request.urlopen's signature (injected by the tests: nothing is sent)."""

    def __init__(self, specs=None, env=None, opener=None, timeout=30.0):
        self.specs, self.env = specs, os.environ if env is None else env
        self.opener, self.timeout, self.bound = opener or urllib.request.urlopen, timeout, {}

    def check(self, toolset):
        if self.specs is None:
            self.bound = {t.token: t.spec for t in toolset.tools.values() if t.spec.get("url") or t.spec.get("host")}
        else:
            names = resolve_names(self.specs, toolset, "--executor http")
            self.bound = {token: self.specs[key] for key, token in names.items()}
        if not self.bound:
            raise AgentError(f"--executor http: {toolset.source or 'the toolset'} has no HTTP specs (url, or host + "
                             "endpoint): pass a catalog (.jsonl) or a spec file with --tools")
        rapid = [t for t, s in self.bound.items() if _is_rapidapi(s)]
        if rapid and not self.env.get("RAPIDAPI_KEY"):
            raise AgentError(f"--executor http: RAPIDAPI_KEY is not set in the environment (needed by "
                             f"{len(rapid)} RapidAPI tools, e.g. {rapid[0]})")

    def build_request(self, tool, arguments):
        spec = self.bound.get(tool.token)
        if spec is None:
            raise ToolError(f"no HTTP spec for {tool.token}")
        url = spec.get("url") or f"https://{spec['host']}{spec.get('endpoint', '')}"
        args = dict(arguments)
        for name in re.findall(r"\{(\w+)\}", url):   # path parameters
            if name in args:
                url = url.replace("{" + name + "}", urllib.parse.quote(str(args.pop(name)), safe=""))
        method = str(spec.get("method") or "GET").upper()
        headers, data = {"Accept": "application/json"}, None
        if _is_rapidapi(spec):
            headers["X-RapidAPI-Key"] = self.env.get("RAPIDAPI_KEY", "")
            headers["X-RapidAPI-Host"] = spec.get("host") or urllib.parse.urlsplit(url).hostname
        if method == "GET":
            query = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
            if query:
                url += ("&" if "?" in url else "?") + urllib.parse.urlencode(query)
        else:
            data, headers["Content-Type"] = json.dumps(args).encode(), "application/json"
        return urllib.request.Request(url, data=data, headers=headers, method=method)

    def call(self, tool, arguments):
        request = self.build_request(tool, arguments)
        try:
            with self.opener(request, timeout=self.timeout) as response:
                body = response.read(MAX_RESPONSE_BYTES).decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            raise ToolError(f"HTTP {e.code} from {request.full_url}: {e.read(300).decode('utf-8', 'replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ToolError(f"{request.full_url}: {getattr(e, 'reason', e)}") from None
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return body


# ---- replay of gold calls --------------------------------------------------------------------------------------------

class ReplayExecutor:
    """Replays one request's gold calls. A call matching an unused gold call (same name, equal normalised arguments,
    see normalize) uses it up and returns its recorded response, cut as in training (gold.to_trajectory keeps the
    paths later calls read); without recorded responses (NESTFUL) it returns {"result": "$varN$", "note": ...}, N the
    gold call's position, so that later calls can write $varN.path$ as the gold arguments do. Anything else is an
    error observation saying what did not match."""

    def __init__(self, gold_calls, observation_chars=OBSERVATION_BUDGET, order="document"):
        self.gold, self.used, self.chars, self.order = list(gold_calls), set(), observation_chars, order
        self.matched = []   # gold index per successful call, in call order

    def check(self, toolset):
        pass   # a gold call to an API outside the toolset just cannot be matched: a benchmark miss, not bad input

    def call(self, tool, arguments):
        i = match_call(tool.api, arguments, self.gold, self.used)
        if i is None:
            raise ToolError(mismatch(tool.api, arguments, self.gold, self.used))
        self.used.add(i)
        self.matched.append(i)
        c = self.gold[i]
        if not c.has_response:
            return {"result": f"$var{i + 1}$", "note": "no recorded response"}
        return Prepared(references.truncate(c.response, self.chars, c.used_paths, order=self.order))


def read_replay_file(path):
    """Gold calls from a JSON file: a benchmark record {"input", "output": [calls]} or a list of calls {"name",
    "arguments"[, "response"]}. NESTFUL's var_result pseudo-call is skipped. -> (request text or None, [GoldCall])."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise AgentError(f"--executor replay:{path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise AgentError(f"--executor replay:{path}: not valid JSON ({e})") from None
    text, calls = (data.get("input"), data.get("output")) if isinstance(data, dict) else (None, data)
    if not isinstance(calls, list):
        raise AgentError(f"--executor replay:{path}: expected a list of calls or a record with an 'output' list")
    gold = []
    for j, c in enumerate(calls):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("arguments"), dict):
            raise AgentError(f"--executor replay:{path} call {j + 1}: a call needs a 'name' and an 'arguments' object")
        if c["name"] != "var_result":
            gold.append(GoldCall(c["name"], c["arguments"], response=c.get("response"), has_response="response" in c))
    for j, c in enumerate(gold):
        if c.has_response:
            c.resolved = references.substitute(c.arguments, lambda var, keys: _resolve(gold, var, keys, path, j))
    return (text.strip() if isinstance(text, str) else None), gold


def _resolve(gold, var, keys, path, j):
    found = references.lookup(gold[var - 1].response, keys) if 1 <= var <= j else None
    if found is None:
        raise AgentError(f"--executor replay:{path} call {j + 1}: $var{var}.{'.'.join(keys)}$ reaches nothing")
    return found[1]


# ---- --executor of the command line -------------------------------------------------------------------------------

def load_callables(target):
    """module.attr (a dict of callables) imported from the current directory or the installed packages."""
    module, _, attr = target.rpartition(".")
    if not module or not attr:
        raise AgentError(f"--executor callables:{target}: give module.attr (e.g. my_tools.FUNCTIONS)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
    except Exception as e:   # noqa: BLE001  (whatever the user's module raises, one line names it)
        raise AgentError(f"--executor callables:{target}: cannot import {module} ({type(e).__name__}: {e})") from None
    if not hasattr(obj, attr):
        raise AgentError(f"--executor callables:{target}: {module} has no attribute {attr!r}")
    return CallableExecutor(getattr(obj, attr), what=f"--executor callables:{target}")


def build_executor(spec, timeout, observation_chars=OBSERVATION_BUDGET, order="document"):
    """--executor -> (executor, the replay record's request text or None)."""
    kind, _, value = spec.partition(":")
    if spec == "none":
        return NoExecutor(), None
    if spec == "http":
        return HttpExecutor(timeout=timeout), None
    if kind == "callables" and value:
        return load_callables(value), None
    if kind == "replay" and value:
        text, calls = read_replay_file(value)
        return ReplayExecutor(calls, observation_chars, order), text
    raise AgentError(f"--executor {spec!r}: use callables:module.attr, http, replay:FILE or none")
