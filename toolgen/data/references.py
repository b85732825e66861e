"""`$varN.path$` references between gold calls: parsing, resolution against recorded responses, and truncating a
response so that what later calls read from it survives.

The convention (ComplexFuncBench and NESTFUL as shipped in nestful-wrapper 0.1.7):
  - `$var2$` is the whole result of the 2nd call; `$var2.a.b$` is the field b of the field a of that result. Path
    parts are plain dict keys and may hold spaces ("$var1.Exchange Rate$"); no file uses list indices in a path.
  - A reference fills a whole argument value ("$var1.id$", the value keeps its JSON type once resolved) or sits inside
    a longer string ("5 * $var1.Exchange Rate$", "Meeting ID: $var1.event_id$"; NESTFUL only): then the value's text
    is spliced in. A dollar amount ("$100-$200") is not a reference: the pattern needs "var" and a number. One
    NESTFUL argument lacks the closing dollar ("$var1.artist_id"): `malformed` finds such texts.
  - Paths walk through lists without an index: in ComplexFuncBench 2,627 of 3,068 references point into a response
    that is a list ("$var1.coordinates.latitude$" on [{"coordinates": ...}, ...]). Such a path is read from the FIRST
    list element that has it; 44 references meet several elements with different values there (the wrapper lost
    which one the original conversation used), so resolution reports them as ambiguous instead of hiding it.
"""

import json
import re

REFERENCE = re.compile(r"\$var(?P<var>\d+)(?P<path>(?:\.[^$]+)?)\$")
OPENING = re.compile(r"\$var\d+")
# How truncate fills its budget: "document" = the response's own order (a cut list keeps its first elements whole);
# "ids-first" = every id-like field first (a cut list still names each element's handle), then the document's order.
ORDERS = ("document", "ids-first")
ID_KEY = re.compile(r"(^|_)(id|ids|token|slug|key)$")          # on the key in lower case: id, hotel_id, quote_key
ID_KEY_CAMEL = re.compile(r"[a-z0-9](Id|Ids|ID|Token|Slug|Key)$")   # hotelId, fromId, productSlug


def parse(text):
    """[(var number, path keys, matched text)] of the references in a string; [] for anything else."""
    if not isinstance(text, str):
        return []
    return [(int(m["var"]), tuple(m["path"][1:].split(".")) if m["path"] else (), m[0])
            for m in REFERENCE.finditer(text)]


def references(value):
    """Every reference in an argument object, in document order (nested dicts and lists included)."""
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return parse(value)


def malformed(value):
    """Texts that open a reference but do not close it ("$var1.artist_id", NESTFUL executable record 84): read
    strictly they are plain text, so the caller can report them instead of passing a broken value on."""
    if isinstance(value, dict):
        return [t for v in value.values() for t in malformed(v)]
    if isinstance(value, list):
        return [t for v in value for t in malformed(v)]
    return [value] if isinstance(value, str) and OPENING.search(REFERENCE.sub("", value)) else []


def candidates(value, keys, at=()):
    """Every (concrete path, value) that `keys` reaches in `value`, in document order.

    A list met on the way is searched element by element (its index goes into the concrete path), as the data's
    paths carry no index; a key made of digits also indexes a list directly.
    """
    if not keys:
        yield at, value
        return
    key, rest = keys[0], keys[1:]
    if isinstance(value, dict):
        if key in value:
            yield from candidates(value[key], rest, at + (key,))
    elif isinstance(value, list):
        if key.isdigit() and int(key) < len(value):
            yield from candidates(value[int(key)], rest, at + (int(key),))
        else:
            for i, item in enumerate(value):
                yield from candidates(item, keys, at + (i,))


def lookup(value, keys):
    """(concrete path, value, ambiguous) of the first candidate; None when the path reaches nothing.

    ambiguous: other candidates carry a different value (the first one is still the answer, by convention)."""
    found = list(candidates(value, keys))
    if not found:
        return None
    first = json.dumps(found[0][1], sort_keys=True)
    return found[0][0], found[0][1], any(json.dumps(v, sort_keys=True) != first for _, v in found[1:])


def substitute(value, resolve):
    """A copy of an argument object with every reference replaced by resolve(var, keys).

    A string that is one reference takes the value itself (a number stays a number); a reference inside a longer
    string is replaced by the value's text (strings as they are, anything else as JSON)."""
    if isinstance(value, dict):
        return {k: substitute(v, resolve) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, resolve) for v in value]
    refs = parse(value)
    if not refs:
        return value
    if len(refs) == 1 and refs[0][2] == value:
        return resolve(refs[0][0], refs[0][1])

    def text(m):
        v = resolve(int(m["var"]), tuple(m["path"][1:].split(".")) if m["path"] else ())
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
    return REFERENCE.sub(text, value)


# ---- truncation ------------------------------------------------------------------------------------------------------

def _dumps(value):
    return json.dumps(value, ensure_ascii=False)


def _preorder(value, at=()):
    """Paths of every node below the root, parents before children, in the response's own order."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        yield at + (k,)
        yield from _preorder(v, at + (k,))


def is_id_key(key):
    """A field that names a handle other calls take (vehicle_id, hotelId, token, slug, quote_key)."""
    return isinstance(key, str) and bool(ID_KEY.search(key.lower()) or ID_KEY_CAMEL.search(key))


def _ids_first(value):
    """_preorder with every id-keyed node moved to the front, its ancestors just before it and its subtree after it;
    the other nodes follow in their own order. Every prefix holds the ancestors of its nodes, as a preorder prefix
    does, so truncate's bisection over prefixes stays valid."""
    nodes = list(_preorder(value))
    front, seen, root = [], set(), None
    for p in nodes:
        if root is not None and p[:len(root)] == root:   # inside an id field's value (a list of ids): whole
            front.append(p)
            seen.add(p)
            continue
        root = p if is_id_key(p[-1]) else None
        if root is not None:
            for i in range(1, len(p) + 1):
                if p[:i] not in seen:
                    seen.add(p[:i])
                    front.append(p[:i])
    return front + [p for p in nodes if p not in seen]


def _select(value, at, chosen, whole, on_the_way):
    """The part of value made of the chosen nodes; a path in `whole` keeps its subtree entire."""
    if at in whole:
        return value
    if isinstance(value, dict):
        keep = ((k, at + (k,)) for k in value)
        return {k: _select(value[k], p, chosen, whole, on_the_way) for k, p in keep
                if p in chosen or p in on_the_way or p in whole}
    if isinstance(value, list):
        keep = ((i, at + (i,)) for i in range(len(value)))
        return [_select(value[i], p, chosen, whole, on_the_way) for i, p in keep
                if p in chosen or p in on_the_way or p in whole]
    return value


def truncate(value, budget, keep=(), count=len, order="document"):
    """JSON text of `value` cut to `budget` units of `count` (characters by default; pass a token counter for tokens).

    keep: concrete paths (as `lookup` returns) that must survive; their subtrees stay whole and their ancestors stay.
    The rest of the budget is filled with the response in its own order (parents before children; order "ids-first":
    every id-like field before the rest, see ORDERS), as the longest
    prefix of that order that fits, found by bisection: O(log n) serialisations, whatever `count` costs. The result
    is always valid JSON and a sub-document of `value` (dicts keep fewer keys, lists fewer elements, order kept).
    When the kept paths alone exceed the budget they are returned anyway: a later call cannot do without them.
    budget None: no truncation.
    """
    if order not in ORDERS:
        raise ValueError(f"observation order {order!r}: one of {', '.join(ORDERS)}")
    full = _dumps(value)
    if budget is None or count(full) <= budget:
        return full
    whole = {tuple(p) for p in keep}
    on_the_way = {p[:i] for p in whole for i in range(1, len(p))}
    nodes = list(_preorder(value)) if order == "document" else _ids_first(value)

    def cut(n):
        return _dumps(_select(value, (), set(nodes[:n]), whole, on_the_way))

    lo, hi = 0, len(nodes)        # lo: the longest prefix known to fit (0: only what must stay)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(cut(mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)
