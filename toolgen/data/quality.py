"""What a trajectory step really holds: a thought, complete arguments, an observation, a final answer.

The rules of the agent stage (stages.agent_example) and the counts of prepare_report.json both come from here, so a
step counted as complete is exactly a step whose arguments carry loss. `resolved` is [(token, api, step)] as prepare
builds it: api is None for the Finish step.

  - thought: the source's text, stripped; empty means none (no placeholder is written in its place).
  - arguments of a call: complete when recorded whole (not None: tooleval files cut them at 100 characters), a JSON
    object, not marked ambiguous (a ComplexFuncBench reference that met several different values), and not `{}` for
    an API whose documentation requires parameters (a call that cannot have worked is no target).
  - Finish: its arguments are complete when they parse to an object that gives up, or gives an answer with a
    non-empty final_answer (ComplexFuncBench records no answer text; tooleval cuts most answers).
  - observation: a non-empty recorded response. None (NESTFUL recorded none) and "" (tooleval cut it) are both none.
"""

import collections
import json

# Per-source counts of prepare_report.json "agent": {source: {...}}, in this order.
COUNTS = ("trajectories", "train", "test", "steps", "calls", "steps_with_thought", "calls_with_complete_arguments",
          "calls_with_observation", "finish_with_answer", "dropped_below_min_complete", "dropped_incomplete_test")


def thought(step):
    return (step.thought or "").strip()


def _json_object(text):
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def arguments_complete(step, api):
    """True when the step's arguments are a real target (see the module docstring)."""
    if step.arguments is None or step.ambiguous:
        return False
    value = _json_object(step.arguments)
    if value is None:
        return False
    if api is None:
        return finish_complete(value)
    return bool(value) or not api.required


def finish_complete(value):
    if value.get("return_type") != "give_answer":
        return bool(value.get("return_type"))
    answer = value.get("final_answer")
    return isinstance(answer, str) and bool(answer.strip())


def has_observation(step):
    return isinstance(step.observation, str) and bool(step.observation.strip())


def complete_share(resolved):
    """The share of tool calls (Finish not counted: its arguments are the answer) with complete arguments; 1.0 for a
    trajectory without calls."""
    calls = [(api, step) for _, api, step in resolved if api is not None]
    return sum(arguments_complete(step, api) for api, step in calls) / len(calls) if calls else 1.0


def count(counter, resolved):
    """Add one trajectory's steps to a per-source Counter (COUNTS' names)."""
    counter["trajectories"] += 1
    for _, api, step in resolved:
        counter["steps"] += 1
        counter["steps_with_thought"] += bool(thought(step))
        if api is None:
            counter["finish_with_answer"] += arguments_complete(step, None)
            continue
        counter["calls"] += 1
        counter["calls_with_complete_arguments"] += arguments_complete(step, api)
        counter["calls_with_observation"] += has_observation(step)


def rank(resolved):
    """Which of two trajectories of one query to keep: the more complete (arguments, then observations, then
    thoughts), then the longer. So a complete DFS answer beats a longer tooleval tree whose arguments were cut."""
    calls = [step for _, api, step in resolved if api is not None]
    observed = sum(map(has_observation, calls)) / len(calls) if calls else 1.0
    thoughts = sum(bool(thought(step)) for _, _, step in resolved) / len(resolved)
    return complete_share(resolved), observed, thoughts, len(resolved)


def new_counts(names=COUNTS):
    """A Counter holding every name at 0, in order, so that the report shows zeros too."""
    return collections.Counter(dict.fromkeys(names, 0))


def select(trajectories, min_complete, counts, report):
    """The trajectories that are written, counted; the others dropped and counted.

    trajectories: [(resolved, is_test, payload)]. Dropped: below `min_complete` (share of complete calls), and in the
    test split anything short of complete (a call without a target is not scored, so the step-wise argument accuracy
    and completion rate would measure less than the trajectory, on a history holding markers). Returns
    [(resolved, is_test, payload)] of what is written; every drop goes to counts and to report.skipped (not through
    report.skip: they are choices, not bad input, so --strict does not stop on them).
    """
    kept = []
    for resolved, is_test, payload in trajectories:
        share = complete_share(resolved)
        if share < min_complete:
            counts["dropped_below_min_complete"] += 1
            report.skipped["trajectory_below_min_complete"] += 1
        elif is_test and share < 1.0:
            counts["dropped_incomplete_test"] += 1
            report.skipped["trajectory_incomplete_in_test_split"] += 1
        else:
            count(counts, resolved)
            counts["test" if is_test else "train"] += 1
            kept.append((resolved, is_test, payload))
    return kept
