"""When a predicted call is a gold call: the comparison the replay executor, the end-to-end metrics and the recovery
examples (recovery.py) share. Values are compared normalised (normalize); a call matches the first unused gold call with
its name and equal arguments (match_call); mismatch says why none does, naming argument keys, never expected values."""

import re

_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def normalize(value):
    """The form in which two argument values are compared: strings case- and whitespace-folded; numbers (and strings
    that are decimal numbers: "1" == 1 == 1.0) as floats; booleans as the strings "true" / "false" (True == "True",
    True != 1: Python alone would say True == 1); dicts compare by key (order irrelevant) and drop null values (null
    = not given); lists keep their order."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = " ".join(value.lower().split())
        return float(text) if _NUMBER.fullmatch(text) else text
    if isinstance(value, dict):
        return {str(k): normalize(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return normalize(str(value))


def gold_arguments(call):
    """What a predicted call is compared with: the resolved values where responses were recorded (the model saw
    them), the arguments with their $varN.path$ references kept where none were (NESTFUL)."""
    return call.resolved if call.has_response and call.resolved is not None else call.arguments


def match_call(name, arguments, gold_calls, used):
    """Index of the first gold call not in `used` with this name and equal normalised arguments, else None."""
    target = normalize(arguments)
    return next((i for i, c in enumerate(gold_calls)
                 if i not in used and c.name == name and normalize(gold_arguments(c)) == target), None)


def mismatch(name, arguments, gold_calls, used):
    """Why a call matches no unused gold call. It names argument keys, never expected values: an observation that
    showed them would let the model copy the answer into its next call."""
    same = [i for i, c in enumerate(gold_calls) if c.name == name]
    if not same:
        return f"no call named {name} expected"
    free = [i for i in same if i not in used]
    if not free:
        return f"every expected call named {name} ({len(same)}) was already made"
    got = normalize(arguments)

    def differences(i):
        want = normalize(gold_arguments(gold_calls[i]))
        return ([f"missing {k!r}" for k in want if k not in got] + [f"unexpected {k!r}" for k in got if k not in want]
                + [f"different value for {k!r}" for k in want if k in got and got[k] != want[k]])
    best = min(free, key=lambda i: len(differences(i)))
    return (f"arguments differ from the closest expected call named {name} (call {best + 1}): "
            f"{'; '.join(differences(best))}")
