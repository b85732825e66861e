"""Ids that a gold call copies from an earlier recorded response, and whether the observation shown holds them.

ComplexFuncBench's later calls pass on handles from earlier responses (`vehicle_id`, `hotel_id`, a flight's `token`)
as literal values, not as `$varN` references, so references.truncate has no path to keep for them. When such an id
lies beyond the cut of every earlier observation, the agent stage is trained to write an id it was never shown —
to invent one — and at test time the replay loop can only be passed by a guess (benchmarks/results/quality.md,
sixth and seventh runs). prepare counts such calls (prepare_report.json: train_calls_copying_unseen_ids);
benchmarks/e2e_breakdown.py --reach groups held-out requests by the budget their ids need.

What counts as a copied id: a string of 4+ characters with a digit that is not a `$varN` reference, a date or a
time, or a number of 4+ digits, found in an earlier response of the request but not in the request's text. Words
(enum values such as "BEST") are left out: the documentation names them.
"""

import json
import re

from toolgen.data import references

DATE_OR_TIME = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}:\d{2}")   # worked out from the request, not copied


def ids(value):
    """The id-like literal values of a call's arguments (see the module docstring), in order."""
    if isinstance(value, dict):
        for v in value.values():
            yield from ids(v)
    elif isinstance(value, list):
        for v in value:
            yield from ids(v)
    elif (isinstance(value, str) and len(value) >= 4 and any(ch.isdigit() for ch in value)
          and not value.startswith("$var") and not DATE_OR_TIME.fullmatch(value)):
        yield value
    elif isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) >= 1000:
        yield str(value)


def copied(request):
    """[(call index, id, the earlier calls with a recorded response)] for every id a call copies from an earlier
    response."""
    whole = {id(c): json.dumps(c.response, ensure_ascii=False) for c in request.calls if c.has_response}
    out = []
    for k, c in enumerate(request.calls):
        earlier = [e for e in request.calls[:k] if e.has_response]
        for value in ids(c.arguments):
            if value not in request.text and any(value in whole[id(e)] for e in earlier):
                out.append((k, value, earlier))
    return out


def _hidden(need, budget, order):
    """The (call index, id) pairs of need (copied's list) that no earlier observation shows at budget/order."""
    shown = {}   # id(call) -> its observation

    def seen(value, earlier):
        return any(value in shown.setdefault(id(e), references.truncate(e.response, budget, e.used_paths, order=order))
                   for e in earlier)
    return [(k, value) for k, value, earlier in need if not seen(value, earlier)]


def unseen(request, budget, order="document"):
    """The (call index, id) pairs of copied(request) that no earlier observation shows, each response cut to budget
    characters in `order` keeping the paths later calls read (as gold.to_trajectory and the replay executor cut)."""
    return _hidden(copied(request), budget, order)


def reach(request, budgets, order="document"):
    """The smallest of budgets at which every id the request's calls copy is shown; 0 when they copy none; None when
    the largest budget still hides one."""
    need = copied(request)   # found once, then checked at each budget
    if not need:
        return 0
    return next((b for b in sorted(budgets) if not _hidden(need, b, order)), None)
