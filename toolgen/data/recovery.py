"""Recovery examples for the agent stage: a failed call, the error the replay executor gives for it, then the call
done right.

Why: every trajectory in the data is error-free, so a model trained on them alone has never seen an error answer. In
the fourth agent run (benchmarks/results/quality.md) 530 of the loop's 1,082 ComplexFuncBench calls got an error;
after 138 of them the next action was <<Finish>>, after only 34 a call that matched.

A recovery example is a training trajectory with one attempt inserted before one of its calls: the same tool with one
argument wrong, the way the loop gets them wrong (a date or a time one unit off, a place with a word missing, a
number off by one, a parameter left out), then the replay executor's error for it (matching.mismatch: it names the
argument, never the expected value), then the gold call as before. The attempt is context only (no loss: Step.failed);
the loss falls on the corrected call and everything after it, as in the trajectory it came from.

toolgen-prepare --recovery-share F: that share of the agent sources' training trajectories (ComplexFuncBench, NESTFUL:
the ones the replay executor can answer) gets one attempt, at a seeded random call; the others stay as they are.
"""

import datetime
import json
import random
import re

from toolgen.data import matching, quality
from toolgen.data.toolbench import Step

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"(\d{2}):(\d{2})")
_DROP = object()   # wrong_value's answer for "leave the parameter out"


def wrong_value(value, rng):
    """A plausible mistake for one argument value, or _DROP (the parameter left out) where there is none."""
    step = rng.choice((-1, 1))
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + step
    if isinstance(value, float):
        return round(value + step * 0.01, 6)
    if isinstance(value, str):
        if _DATE.fullmatch(value):
            try:
                return (datetime.date.fromisoformat(value) + datetime.timedelta(days=step)).isoformat()
            except ValueError:
                return _DROP
        if _TIME.fullmatch(value):
            hour, minute = _TIME.fullmatch(value).groups()
            return f"{(int(hour) + step) % 24:02d}:{minute}"
        words = value.split()
        if len(words) > 1:
            return " ".join(words[:-1])
    return _DROP


def failed_arguments(arguments, gold_calls, position, rng):
    """(wrong arguments, error text) for the call at `position`, or None when no mistake gives an error (every
    perturbation tried, in a seeded order, matches an unused gold call: requests that repeat a call a day apart)."""
    used = set(range(position))   # a gold trajectory matches its calls in order
    name = gold_calls[position].name
    keys = list(arguments)
    rng.shuffle(keys)
    for key in keys:
        value = wrong_value(arguments[key], rng)
        wrong = {k: v for k, v in arguments.items() if k != key}
        if value is not _DROP:
            wrong[key] = value
        if matching.match_call(name, wrong, gold_calls, used) is None:
            return wrong, matching.mismatch(name, wrong, gold_calls, used)
    return None


def with_attempt(resolved, gold_calls, rng):
    """resolved ([(token, api, step)], the gold calls in order, then Finish) with one failed attempt inserted before a
    random call whose arguments are a complete target. Returns (resolved, True), or (resolved, False) unchanged when
    no call can take one."""
    candidates = [i for i, (_, api, step) in enumerate(resolved[:len(gold_calls)])
                  if quality.arguments_complete(step, api) and json.loads(step.arguments)]
    rng.shuffle(candidates)
    for i in candidates:
        token, api, step = resolved[i]
        failed = failed_arguments(json.loads(step.arguments), gold_calls, i, rng)
        if failed is None:
            continue
        arguments, error = failed
        attempt = Step(step.function, json.dumps(arguments, ensure_ascii=False),
                       observation=json.dumps({"error": error}, ensure_ascii=False), failed=True)
        return resolved[:i] + [(token, api, attempt)] + resolved[i:], True
    return resolved, False


def add_attempts(selected, share, seed, name):
    """selected: [(resolved, gold calls)] of one source's training trajectories -> ([resolved], how many got an
    attempt). A seeded draw per trajectory (seed and source name), so the same data gives the same examples."""
    rng = random.Random(f"{seed}:recovery:{name}")
    out, made = [], 0
    for resolved, gold_calls in selected:
        if share > 0 and rng.random() < share:
            resolved, added = with_attempt(resolved, gold_calls, rng)
            made += added
        out.append(resolved)
    return out, made
