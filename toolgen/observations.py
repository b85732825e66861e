"""What the agent's model is shown of tool results: an observation cut to its budget (JSON kept valid), and the
old observations shortened, oldest first, when a prompt outgrows the context budget (toolgen/agent.py)."""

import json

from toolgen.data import references
from toolgen.executors import Prepared

SHORT_OBSERVATION = 200   # characters an old observation keeps at the first shortening pass (then a stub)
REMOVED = '{"removed": "to fit the context"}'


def observation_text(value, chars, order="document"):
    """What the model is shown: text as it is and JSON as JSON, cut to `chars` characters (references.truncate keeps
    JSON valid; filled in `order`, references.ORDERS); a value that is not JSON (a set, an object) as its str().
    Prepared text is shown as it is."""
    if isinstance(value, Prepared):
        return str(value)
    if isinstance(value, str):
        if len(value) <= chars:
            return value
        try:
            value = json.loads(value)   # too long: JSON text is cut as JSON, so that it stays JSON
        except ValueError:
            return value[:chars] + " [cut]"
    try:
        return references.truncate(value, chars, order=order)
    except (TypeError, ValueError):
        text = str(value)
        return text if len(text) <= chars else text[:chars] + " [cut]"


def shorten(text, chars, order="document"):
    """text cut to about `chars` characters (JSON stays valid JSON, filled in `order`); 0: the REMOVED stub. Never
    longer than text."""
    if chars == 0:
        short = REMOVED
    else:
        try:
            short = references.truncate(json.loads(text), chars, order=order)
        except ValueError:
            short = text[:chars] + " [cut]"
    return short if len(short) < len(text) else text


def fit_context(messages, fits, order="document"):
    """messages, or a copy whose observations are shortened, oldest first, until fits(copy): first to
    SHORT_OBSERVATION characters (in `order`, as the loop cuts observations), then replaced by a stub. The request
    and the other turns are never touched. None when even that does not fit."""
    if fits(messages):
        return messages
    view = list(messages)
    tools = [i for i, m in enumerate(messages) if m["role"] == "tool"]
    for chars in (SHORT_OBSERVATION, 0):
        for i in tools:
            view[i] = {"role": "tool", "content": shorten(messages[i]["content"], chars, order)}
            if fits(view):
                return view
    return None
