"""Stage-2 views: retrieval queries written from the catalog (never from a query), so that retrieval training also
covers the APIs no training query names and the ways of asking that the few real queries do not show.

Every view is a name in --views (VIEWS below); each can be used alone or with others, so an ablation table is one
prepared folder per view list. A view yields (view, query text, [API keys]): a multi-API query is labelled with all
its APIs and becomes one retrieval example per API, as a real G2/G3 query does.
"""

import hashlib
import random
import re

from toolgen.data import stages
from toolgen.data.toolbench import DataError

VIEWS = {
    "name": "names the tool: 'I want to use <tool> to <api>: <description>' (--synthetic-queries 1)",
    "ask": "asks without the tool's or API's name: 'Can you help me with this: <description>? I can give you: "
           "<required parameters>' (--synthetic-queries 2 = name,ask)",
    "params": "one API asked for with concrete values: the example values (`default`) of its required parameters, "
              "their descriptions when there is none",
    "multi_tool": "2-3 APIs of one tool in one request, labelled with all of them",
    "multi_category": "2-3 APIs of one category, each of another tool, in one request, labelled with all of them",
    "llm": "requests an instruct model wrote from the API's documentation (--query-writer, toolgen/query_writer.py)",
}
PER_API = ("name", "ask", "params")   # one query per API each, written per API in catalog order


def parse_views(text):
    """'name,ask,params' -> the views in VIEWS order (so the order given does not change the output)."""
    given = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [v for v in given if v not in VIEWS]
    if unknown or not given:
        raise DataError(f"--views {text!r}: unknown view {', '.join(unknown) or '(none given)'}; "
                        f"the views are {', '.join(VIEWS)}")
    return tuple(v for v in VIEWS if v in given)


def synthetic_query_views(n):
    """--synthetic-queries N as a view list: 1 = name, 2 = name and ask."""
    return ("name", "ask")[:n]


def _rng(seed, *parts):
    """A random stream per (seed, view, group): adding a tool elsewhere in the catalog does not move this group's."""
    digest = hashlib.sha256("\0".join(map(str, (seed,) + parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


# ---- what an API does, as a clause a user would say -----------------------------------------------------------------

# Openings of ToolBench descriptions that say nothing about the task ("This endpoint returns ...").
_LEAD = re.compile(r"^(?:(?:this|the|an|a)\s+(?:endpoint|api|function|method|route|call|service)\s*"
                   r"(?:will|can|is used to|lets you|allows (?:you|users) to|that|which|to)?|used to|"
                   r"allows? (?:you|users) to|lets you|use this (?:endpoint|api) to|you can|it|to)\s+", re.I)
# Verbs that open a description; those a user would not say ("returns") become "get".
_AS_GET = {"return", "retrieve", "fetch", "provide", "obtain", "give", "display", "get", "show", "lookup"}
_VERBS = _AS_GET | {
    "search", "list", "find", "check", "generate", "create", "convert", "calculate", "send", "verify", "validate",
    "translate", "track", "detect", "download", "upload", "add", "delete", "remove", "update", "extract", "query",
    "read", "access", "compute", "predict", "analyze", "analyse", "summarize", "book", "scrape", "count", "compare",
    "identify", "parse", "post", "schedule", "set", "load", "resolve", "estimate", "determine", "recognize", "classify",
    "format", "shorten", "encode", "decode", "scan", "filter", "request", "cancel", "register", "make", "edit",
    "modify", "rank", "recommend", "suggest", "discover", "explore", "monitor", "measure", "evaluate", "test", "play",
    "stream", "save", "store", "transform", "sort", "merge", "match", "locate", "geocode", "look", "fetch"}


_DANGLING = {"a", "an", "the", "for", "of", "to", "in", "on", "by", "with", "and", "or", "from", "at", "as", "is",
             "are", "that", "which", "its", "their", "your"}


def _base_verb(word):
    """'Returns' -> 'get', 'Searches' -> 'search', 'Verifies' -> 'verify'; None when the word is not a known verb."""
    w = word.lower()
    for stem in (w, w[:-3] + "y" if w.endswith("ies") else "", w[:-2] if w.endswith("es") else "",
                 w[:-1] if w.endswith("s") else ""):
        if stem in _VERBS:
            return "get" if stem in _AS_GET else stem
    return None


def _first_sentence(text):
    text = re.sub(r"<[^>]+>|`", " ", text or "")
    for part in re.split(r"(?<=[.!?])\s+|\n", text):
        part = " ".join(part.split()).strip(" .:;,!?-")
        if part:
            return part
    return ""


def name_words(name):
    """'stateIsoCode' -> 'state iso code', '/cities/search/:id' -> 'cities search id'."""
    name = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return " ".join(re.sub(r"[^0-9A-Za-z]+", " ", name).lower().split())


def _lower_first(text):
    """Lower-case the first word unless it is an acronym or a name with more capitals ('WNBA', 'iPhone')."""
    first = text.split(" ", 1)[0]
    return text if sum(c.isupper() for c in first) > 1 else text[:1].lower() + text[1:]


def task_clause(api, max_words=20):
    """What the API does as an imperative clause: 'get the latitude and longitude of an address', 'verify a single
    email address'. From the API description, else the tool description, else the API's name."""
    text = (_first_sentence(api.api_description) or _first_sentence(api.tool_description) or name_words(api.api)
            or name_words(api.tool) or "data")   # an API named "/" by a tool named "!!!" still gets a clause
    text = _LEAD.sub("", _LEAD.sub("", text)) or text   # "This endpoint is used to ..." has two openings
    words = text.split()[:max_words]
    while len(words) > 1 and words[-1].lower().strip(",;:") in _DANGLING:   # a cut sentence: "... in a season for"
        words.pop()
    verb = _base_verb(words[0])
    if verb:
        words = [verb] + words[1:]
        if verb == "get" and len(words) > 1 and words[1].lower() in ("you", "users"):
            words = ["get"] + words[2:]
        return " ".join(words).rstrip(" .:;,!?-")
    return "get " + _lower_first(" ".join(words)).rstrip(" .:;,!?-")


# ---- parameters with example values ---------------------------------------------------------------------------------

def _usable_value(value):
    """An example value a user could type: short, one line, not a JSON blob."""
    if isinstance(value, bool):
        text = str(value).lower()        # JSON true, as a user would type it
    elif isinstance(value, (str, int, float)):
        text = str(value).strip()
    else:
        text = ""                        # null, lists, objects
    return text if 0 < len(text) <= 60 and "\n" not in text and not text.startswith(("{", "[")) else ""


def value_phrase(label, value):
    """'the city Lisbon'; a value with a space or comma is quoted: "the address '10 Downing Street, London'"."""
    return f"the {label} " + (f"'{value}'" if re.search(r"[\s,]", value) else value)


def parameter_phrases(api, limit=3):
    """([value phrases], [description phrases]) of the required parameters, or of the optional ones that have an
    example value when none is required: a value when the parameter has one, its description otherwise."""
    params = api.params("required") or [p for p in api.params("optional") if _usable_value(p.get("default"))]
    valued, described = [], []
    for p in params[:limit]:
        label = name_words(str(p.get("name") or "")) or "value"
        value = _usable_value(p.get("default"))
        if value:
            valued.append(value_phrase(label, value))
        else:
            desc = _first_sentence(p.get("description") if isinstance(p.get("description"), str) else "")
            described.append(f"the {label}" + (f" ({desc})" if desc and name_words(desc) != label else ""))
    return valued, described


def _and(parts):
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])}{',' if len(parts) > 2 else ''} and {parts[-1]}"


_PARAM_TEMPLATES = ("Please {clause} for {given}.", "Can you {clause}? Use {given}.", "I want to {clause} for {given}.")


def params_query(api, seed):
    """The params view of one API, or None when it has no parameter to give."""
    valued, described = parameter_phrases(api)
    if not (valued or described):
        return None
    clause = task_clause(api)
    if valued:
        text = _rng(seed, "params", *api.key).choice(_PARAM_TEMPLATES).format(clause=clause, given=_and(valued))
    else:
        text = f"Please {clause}."
    return text + (f" I can give you {_and(described)}." if described else "")


# ---- several APIs in one request ------------------------------------------------------------------------------------

def _multi_clause(api):
    """An API's part of a multi-API request: its clause and, when it has one, the first example value."""
    valued, _ = parameter_phrases(api, limit=1)
    return task_clause(api, max_words=14) + (f" for {valued[0]}" if valued else "")


def multi_query(apis, rng):
    """One request asking for 2-3 things at once, in the order given (a template picked by rng)."""
    c = [_multi_clause(a) for a in apis]
    templates = [f"I need to do a few things: {_and(c)}.", f"Can you {c[0]}? Also, {_and(c[1:])}.",
                 f"First, {c[0]}. Then {c[1]}." + (f" Finally, {c[2]}." if len(c) > 2 else ""),
                 f"Please help me {_and(c)}."]
    return rng.choice(templates)


def _sizes(n, rng):
    """Group sizes of 2 or 3 that add up to n (n >= 2), drawn by rng: no API is left alone."""
    sizes = []
    while n:
        size = rng.choice((2, 3)) if n >= 5 else 2 if n in (2, 4) else 3
        sizes.append(size)
        n -= size
    return sizes


def tool_groups(keys, rng):
    """multi_tool: the APIs of one tool shuffled and cut into groups of 2-3; every API in exactly one group."""
    keys = list(keys)
    rng.shuffle(keys)
    groups, start = [], 0
    for size in _sizes(len(keys), rng) if len(keys) >= 2 else []:
        groups.append(keys[start:start + size])
        start += size
    return groups


def category_groups(keys, rng):
    """multi_category: groups of 2-3 APIs of the category, each of another tool; every API in at least one group.
    The tools are interleaved so that neighbours differ; an API left over (its tool has more APIs than the others)
    gets partners of other tools drawn again."""
    by_tool = {}
    for k in keys:
        by_tool.setdefault(k[1], []).append(k)
    if len(by_tool) < 2:
        return []
    tools = sorted(by_tool)
    rng.shuffle(tools)
    for t in tools:
        rng.shuffle(by_tool[t])
    order = [by_tool[t][i] for i in range(max(map(len, by_tool.values()))) for t in tools if i < len(by_tool[t])]
    groups, current, leftover, size = [], [], [], rng.choice((2, 3))
    for k in order:
        if any(k[1] == other[1] for other in current):
            leftover.append(k)
            continue
        current.append(k)
        if len(current) == size:
            groups.append(current)
            current, size = [], rng.choice((2, 3))
    leftover += current if len(current) < 2 else []
    groups += [current] if len(current) >= 2 else []
    for k in leftover:
        others = sorted(t for t in by_tool if t != k[1])
        partners = rng.sample(others, min(len(others), rng.choice((1, 2))))
        groups.append([k] + [rng.choice(by_tool[t]) for t in partners])
    return groups


def multi_api_queries(catalog, view, seed, rounds=1):
    """[(text, [keys])] of multi_tool (groups by tool) or multi_category (groups by category). Each round cuts every
    group anew, so with `rounds` = N each API is in about N requests of the view."""
    by_group = {}
    for k in sorted(catalog.apis):
        by_group.setdefault(k[:2] if view == "multi_tool" else k[:1], []).append(k)
    out = []
    for r in range(rounds):
        for group, keys in sorted(by_group.items()):
            rng = _rng(seed, view, r, *group)
            cut = tool_groups(keys, rng) if view == "multi_tool" else category_groups(keys, rng)
            out += [(multi_query([catalog.apis[k] for k in g], rng), g) for g in cut]
    return out


# ---- all views -> retrieval examples --------------------------------------------------------------------------------

def view_queries(catalog, views, seed, multi_rounds=1, llm_queries=None):
    """[(view, text, [keys])]: the per-API views API by API in catalog order (name and ask as --synthetic-queries
    wrote them, so that option's files stay byte for byte the same), then the multi-API views, then the LLM's."""
    out = []
    for k in sorted(catalog.apis):
        api = catalog.apis[k]
        written = dict(zip(("name", "ask"), stages.synthetic_queries(api, 2)))
        if "params" in views:
            written["params"] = params_query(api, seed)
        out += [(v, written[v], [k]) for v in PER_API if v in views and written[v]]
    for view in ("multi_tool", "multi_category"):
        if view in views:
            out += [(view, text, keys) for text, keys in multi_api_queries(catalog, view, seed, multi_rounds)]
    if "llm" in views:
        out += [("llm", text, [k]) for k in sorted(catalog.apis) for text in (llm_queries or {}).get(k, [])]
    return out


def normalize(text):
    return " ".join(text.lower().split())


def view_examples(queries, names, held_out, report):
    """Retrieval examples of view_queries' output, one per (query, API), marked synthetic. A query whose text is that
    of a held-out (test or validation) query is dropped and counted: no view may put a held-out text in training.
    -> (examples, {view: {"queries": n, "examples": n}})."""
    examples, counts = [], {}
    for view, text, keys in queries:
        if normalize(text) in held_out:
            report.skip("view_query_equal_to_held_out_query", f"view {view}: {text[:80]}")
            continue
        examples += [{**stages.retrieval_example(text, names[k]), "synthetic": True} for k in keys]
        c = counts.setdefault(view, {"queries": 0, "examples": 0})
        c["queries"] += 1
        c["examples"] += len(keys)
    return examples, counts
