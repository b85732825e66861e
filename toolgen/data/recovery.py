"""Recovery examples for the agent stage: a failed call, the error the replay executor gives for it, then the call
done right.

Why: every trajectory in the data is error-free, so a model trained on them alone has never seen an error answer. In
the fourth agent run (benchmarks/results/quality.md) 530 of the loop's 1,082 ComplexFuncBench calls got an error;
after 138 of them the next action was <<Finish>>, after only 34 a call that matched.

A recovery example is a training trajectory with one attempt inserted before one of its calls: the same tool with one
argument wrong, the way the loop gets them wrong (a date or a time one unit off, a place with a word missing, a
number off by one, another request's value for the same parameter, an optional parameter left out — never a required
one: the loop catches that before any call, with a repair turn, so the executor never answers it), then the replay
executor's error for it (matching.mismatch: it names the argument, never the expected value), then the gold call as
before. The attempt is context only (no loss: Step.failed); the loss falls on the corrected call and everything after
it, as in the trajectory it came from.

toolgen-prepare --recovery-share F: that share of the agent sources' training trajectories (ComplexFuncBench, NESTFUL:
the ones the replay executor can answer) gets one attempt, at a random call. Each trajectory draws from its own seed
(seed, source, request uid), so the trajectories of share 0.3 are among those of share 0.5.
"""

import datetime
import json
import random
import re

from toolgen.data import matching, quality, stages
from toolgen.data.toolbench import Step

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"(\d{2}):(\d{2})")
_DROP = object()   # wrong_value's answer for "leave the parameter out"


def wrong_value(value, rng, others=()):
    """A plausible mistake for one argument value: one unit off, a word missing, else one of `others` (the values
    other gold calls give the same parameter); _DROP (leave the parameter out) when there is none."""
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
                pass
        elif _TIME.fullmatch(value):
            hour, minute = _TIME.fullmatch(value).groups()
            return f"{(int(hour) + step) % 24:02d}:{minute}"
        elif len(value.split()) > 1:
            return " ".join(value.split()[:-1])
    different = [v for v in others if matching.normalize(v) != matching.normalize(value)]
    return rng.choice(different) if different else _DROP


def failed_arguments(arguments, gold_calls, position, rng, required=(), pool=None):
    """(wrong arguments, error text) for the call at `position`, or None when no mistake gives an error the loop
    would show (every perturbation tried, in a seeded order, matches an unused gold call — requests that repeat a call
    a day apart — or would leave out a required parameter). pool: {(api name, parameter): [values]} (value_pool)."""
    used = set(range(position))   # a gold trajectory matches its calls in order
    name = gold_calls[position].name
    keys = list(arguments)
    rng.shuffle(keys)
    for key in keys:
        value = wrong_value(arguments[key], rng, (pool or {}).get((name, key), ()))
        if value is _DROP and key in required:
            continue
        wrong = {k: v for k, v in arguments.items() if k != key}
        if value is not _DROP:
            wrong[key] = value
        if matching.match_call(name, wrong, gold_calls, used) is None:
            return wrong, matching.mismatch(name, wrong, gold_calls, used)
    return None


def with_attempt(resolved, gold_calls, rng, pool=None):
    """resolved ([(token, api, step)], the gold calls in order, then Finish) with one failed attempt inserted before a
    random call whose arguments are a complete target. Returns (resolved, True), or (resolved, False) unchanged when
    no call can take one."""
    candidates = [i for i, (_, api, step) in enumerate(resolved[:len(gold_calls)])
                  if quality.arguments_complete(step, api) and json.loads(step.arguments)]
    rng.shuffle(candidates)
    for i in candidates:
        token, api, step = resolved[i]
        required = {p.get("name") for p in api.params("required")}
        failed = failed_arguments(json.loads(step.arguments), gold_calls, i, rng, required, pool)
        if failed is None:
            continue
        arguments, error = failed
        attempt = Step(step.function, json.dumps(arguments, ensure_ascii=False),
                       observation=stages.error_observation(error), failed=True)
        return resolved[:i] + [(token, api, attempt)] + resolved[i:], True
    return resolved, False


def value_pool(requests):
    """{(api name, parameter): [distinct values]} over the gold calls of the requests: what another request gave."""
    pool = {}
    for r in requests:
        for c in r.calls:
            for key, value in (matching.gold_arguments(c) or {}).items():
                seen = pool.setdefault((c.name, key), {})
                seen.setdefault(json.dumps(value, sort_keys=True, ensure_ascii=False), value)
    return {k: list(v.values()) for k, v in pool.items()}


def add_attempts(selected, share, seed, name):
    """selected: [(resolved, GoldRequest)] of one source's training trajectories -> ([resolved], how many got an
    attempt). Each trajectory's draws come from its own seed (seed, source, uid): the same data gives the same
    examples, and a larger share keeps the smaller share's attempts."""
    pool = value_pool([r for _, r in selected]) if share > 0 else {}
    out, made = [], 0
    for resolved, request in selected:
        rng = random.Random(f"{seed}:recovery:{name}:{request.uid}")
        if share > 0 and rng.random() < share:
            resolved, added = with_attempt(resolved, request.calls, rng, pool)
            made += added
        out.append(resolved)
    return out, made
