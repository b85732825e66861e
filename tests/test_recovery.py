"""Recovery examples (toolgen/data/recovery.py): a failed attempt, the replay executor's own error for it, then the
gold call; the attempt carries no loss."""

import json
import random
from types import SimpleNamespace

import pytest

from test_prepare_sources import from_source, with_sources
from toolgen.data import recovery, stages
from toolgen.data.gold import GoldCall
from toolgen.data.toolbench import Step, Trajectory
from toolgen.agent import parse_arguments
from toolgen.executors import ReplayExecutor, ToolError
from toolgen.tokens import FINISH


class Down:
    """An rng whose choice is always the first option (one unit down) and whose shuffle keeps the order."""

    def choice(self, options):
        return options[0]

    def shuffle(self, items):
        pass


@pytest.mark.parametrize("value, wrong", [
    ("2024-11-21", "2024-11-20"), ("2024-03-01", "2024-02-29"), ("10:00", "09:00"), ("00:30", "23:30"),
    ("Brisbane Airport", "Brisbane"), ("Los Angeles International Airport", "Los Angeles International"),
    (3, 2), (1.5, 1.49), (True, False), ("Paris", recovery._DROP), ([1, 2], recovery._DROP),
    ("2024-02-30", recovery._DROP), ("$var1.id$", recovery._DROP)])
def test_wrong_value(value, wrong):
    assert recovery.wrong_value(value, Down()) == wrong


def test_wrong_value_takes_another_requests_value():
    """Where no unit or word can be changed: a value another gold call gives the parameter (never an equal one)."""
    assert recovery.wrong_value("Paris", Down(), ["paris ", "Rome"]) == "Rome"
    assert recovery.wrong_value("$var1.id$", Down(), ["$var2.dest_id$"]) == "$var2.dest_id$"
    assert recovery.wrong_value("Paris", Down(), ["PARIS"]) is recovery._DROP


def call(name, arguments, response=None):
    return GoldCall(name, arguments, arguments, response or {"ok": name}, True)


def resolved_of(gold, optional=()):
    """[(token, api, step)] as agent_sources builds it: the gold calls in order, then Finish. Every parameter is
    required but those named in `optional`."""
    def api(c):   # what agent_example, quality.arguments_complete and recovery read of an Api
        required = [k for k in c.resolved if k not in optional]
        return SimpleNamespace(api=c.name, api_description="", required=required, params=lambda kind: [
            {"name": k} for k in c.resolved if (k in required) == (kind == "required")])
    out = [(f"<<t&&{c.name}>>", api(c), Step(c.name, json.dumps(c.resolved), observation=json.dumps(c.response)))
           for c in gold]
    return out + [(FINISH, None, Step("Finish", json.dumps({"return_type": "give_answer"})))]


@pytest.mark.parametrize("seed", range(6))
def test_attempt_shows_the_replay_executors_error(seed):
    """The attempt is one the loop would execute (its arguments pass agent.parse_arguments: every required parameter
    is there), and its observation is what the replay executor answers it, after the calls before it matched."""
    gold = [call("Search_Car_Location", {"query": "Brisbane Airport"}),
            call("Search_Car_Rentals", {"pick_up_date": "2024-11-22", "pick_up_time": "10:00", "latitude": -27.38,
                                        "vehicle_id": "ab12", "sort_by": "price"})]
    resolved, added = recovery.with_attempt(resolved_of(gold, optional={"sort_by"}), gold, random.Random(seed))
    assert added and len(resolved) == 4
    (i, (token, api, attempt)), = [(i, r) for i, r in enumerate(resolved) if r[2].failed]
    assert token == resolved[i + 1][0] and not resolved[i + 1][2].failed   # the same tool, then the gold call
    wrong = json.loads(attempt.arguments)
    assert parse_arguments(attempt.arguments, api.required) == (wrong, None)
    (key,) = [k for k in gold[i].resolved if wrong.get(k, recovery._DROP) != gold[i].resolved[k]]
    executor = ReplayExecutor(gold)
    for c in gold[:i]:
        executor.call(SimpleNamespace(api=c.name), c.resolved)
    with pytest.raises(ToolError) as e:
        executor.call(SimpleNamespace(api=gold[i].name), wrong)
    assert json.loads(attempt.observation) == {"error": str(e.value)} and repr(key) in str(e.value)
    assert str(gold[i].resolved[key]) not in str(e.value)   # it names the parameter, never the expected value


def test_a_required_parameter_is_never_left_out():
    """A required single-word value with nothing to swap in gives no attempt (the loop would repair it, not call);
    with another request's value for it, that value; an optional one may be left out."""
    gold = [call("Search", {"query": "Paris"})]
    plain = resolved_of(gold)
    assert recovery.with_attempt(plain, gold, Down()) == (plain, False)
    resolved, added = recovery.with_attempt(resolved_of(gold), gold, Down(), {("Search", "query"): ["Paris", "Rome"]})
    assert added and json.loads(resolved[0][2].arguments) == {"query": "Rome"}
    resolved, added = recovery.with_attempt(resolved_of(gold, optional={"query"}), gold, Down())
    assert added and json.loads(resolved[0][2].arguments) == {} and "missing 'query'" in resolved[0][2].observation


def test_no_attempt_when_every_mistake_is_another_gold_call():
    """A request that makes the same call a day apart: a date one day off is the other call, not an error."""
    gold = [call("Search", {"date": "2024-11-21"}), call("Search", {"date": "2024-11-20"}),
            call("Search", {"date": "2024-11-22"})]
    assert recovery.failed_arguments(gold[0].resolved, gold, 0, random.Random(0)) is None
    assert recovery.failed_arguments(gold[1].resolved, gold, 1, random.Random(0)) is not None   # call 0 is used


def test_attempt_carries_no_loss():
    gold = [call("Search", {"query": "New York City"})]
    resolved, added = recovery.with_attempt(resolved_of(gold), gold, Down())
    messages = stages.agent_example(Trajectory("Find flights from New York City", []), resolved)["messages"]
    loss = [(m["role"], m["content"][:16], m["loss"]) for m in messages if m["role"] in ("assistant", "tool")]
    assert added and loss == [
        ("assistant", "<<t&&Search>>", False), ("assistant", '{"query": "New Y', False),
        ("tool", '{"error": "argum', False),
        ("assistant", "<<t&&Search>>", True), ("assistant", '{"query": "New Y', True), ("tool", '{"ok": "Search"}', False),
        ("assistant", FINISH, True), ("assistant", '{"return_type": ', False)]   # no answer text: no loss
    assert json.loads(messages[5]["content"]) == {"query": "New York"}


def test_prepare_recovery_share():
    """--recovery-share: off changes nothing; 1.0 gives every agent-source training trajectory one attempt (counted),
    the same ones on every run; ToolBench's trajectories are left as they are."""
    off, on = with_sources(test_fraction=0.0), with_sources(test_fraction=0.0, recovery_share=1.0)
    assert with_sources(test_fraction=0.0, recovery_share=0.0) == off
    report = on["prepare_report.json"]
    assert report["recovery_share"] == 1.0 and off["prepare_report.json"]["recovery_share"] == 0.0
    for name in ("complexfuncbench", "nestful"):
        before, after = from_source(off["agent_tuning.json"], name), from_source(on["agent_tuning.json"], name)
        errors = [sum(m["role"] == "tool" and m["content"].startswith('{"error": ') for m in ex["messages"]) for ex in after]
        assert len(after) == len(before) and report["sources"][name]["recovery_examples"] == sum(errors) > 0
        assert off["prepare_report.json"]["sources"][name]["recovery_examples"] == 0
        assert all(len(a["messages"]) == len(b["messages"]) + 5 * e for a, b, e in zip(after, before, errors))
    assert from_source(on["agent_tuning.json"], "toolbench") == from_source(off["agent_tuning.json"], "toolbench")
    assert with_sources(test_fraction=0.0, recovery_share=1.0)["agent_tuning.json"] == on["agent_tuning.json"]
    for ex in from_source(on["agent_tuning.json"], "complexfuncbench") + from_source(on["agent_tuning.json"], "nestful"):
        m = ex["messages"]
        for i in (i for i, x in enumerate(m) if x["role"] == "tool" and x["content"].startswith('{"error": ')):
            required = json.loads(m[i - 2]["content"][len(stages.ASK_INPUT):])["required"]
            assert parse_arguments(m[i - 1]["content"], required)[1] is None   # the loop would have made this call
    # a smaller share keeps a subset of the larger one's attempts, the same ones
    half = with_sources(test_fraction=0.0, recovery_share=0.5)["agent_tuning.json"]
    changed = [(h, a) for h, a, b in zip(half, on["agent_tuning.json"], off["agent_tuning.json"]) if h != b]
    assert changed and all(h == a for h, a in changed)
