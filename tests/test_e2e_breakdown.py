"""The benchmarks' end-to-end analysis scripts on hand-made runs: benchmarks/e2e_breakdown.py (by gold length, first
failure, invalid answers by turn kind, what follows an error, by observation reach: toolgen/data/copied_ids.py) and
benchmarks/e2e_choose.py (the validation choice among runs)."""

import json
import os
import sys

import pytest
from conftest import ROOT

from toolgen.data.copied_ids import ids, reach, unseen
from toolgen.data.gold import GoldCall, GoldRequest
from toolgen.tokens import FINISH
from toolgen.transcript import Step, Transcript

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from e2e_breakdown import after_error, breakdown, invalid_json, markdown  # noqa: E402
from e2e_choose import choose, markdown as choice_markdown  # noqa: E402


def test_e2e_breakdown_by_length_and_first_failure():
    """benchmarks/e2e_breakdown.py on hand-made runs: a 1-call request solved, a 3-call one with its second call's
    value wrong, a 3-call one stopped by the time limit and a 7-call one never started (neither scored)."""

    def call(city):
        return GoldCall("weather", {"city": city})
    a = GoldRequest("a", "", [call("Paris")], None, "")
    b = GoldRequest("b", "", [call("Paris"), call("Rome"), call("Oslo")], None, "")
    c = GoldRequest("c", "", [call("Paris"), call("Rome"), call("Oslo")], None, "")
    d = GoldRequest("d", "", [call(str(i)) for i in range(7)], None, "")
    wrong = ("arguments differ from the closest expected call named weather (call 2): different value for 'city'; "
             "missing 'units'")
    runs = [Transcript("", "a", steps=[Step(0, "<<T&&weather>>", "weather", arguments={"city": "paris"}),
                                       Step(1, FINISH)], stop_reason="finish"),
            Transcript("", "b", steps=[Step(0, "<<T&&weather>>", "weather", arguments={"city": "Paris"}),
                                       Step(1, "<<T&&weather>>", "weather", arguments={"city": "Roma"}, error=wrong),
                                       Step(2, FINISH)], stop_reason="finish"),
            Transcript("", "c", steps=[Step(0, "<<T&&weather>>", "weather", arguments={"city": "Paris"})],
                       stop_reason="deadline")]
    result = breakdown(runs, [a, b, c, d])
    rows = result["by_length"]
    assert list(rows) == ["1-2", "3-4", "7+"]
    assert rows["1-2"] == {"held_out": 1, "run": 1, "success_rate": 1.0, "call_accuracy": 1.0,
                           "tool_selection_accuracy": 1.0}
    # b: 1 of 3 gold calls matched; tool choices weather, weather (right: calls of it are left), Finish (wrong: 2 left)
    assert rows["3-4"] == {"held_out": 2, "run": 1, "success_rate": 0.0, "call_accuracy": pytest.approx(1 / 3),
                           "tool_selection_accuracy": pytest.approx(2 / 3)}
    assert rows["7+"] == {"held_out": 1, "run": 0}
    assert result["first_failure"] == {"none": 1, "an argument": 1}
    # b's failed second call was followed by Finish; c (stopped by the deadline) is not scored
    assert result["after_error"] == {"errors": 1, "then_finish": 1, "then_same_tool": 0, "then_matched": 0,
                                     "then_nothing": 0}
    assert result["parameters"] == {"city": 1, "units": 1}
    assert "| 7+ | 0 / 1 | - | - | - |" in markdown(result)
    assert result["invalid_json"] == {"tool": {"turns": 0, "invalid": 0}, "finish": {"turns": 0, "invalid": 0}}


def test_e2e_breakdown_splits_invalid_json_by_turn_kind():
    """Two tool turns (one answered with broken JSON first) and two Finish turns (one cut mid-answer): 1 of 2 each;
    a step without an answer (no argument turn) is not counted."""
    run = Transcript("", "a", steps=[
        Step(0, "<<T&&weather>>", "weather", answers=['{"city": "Paris"}'], valid_json=True),
        Step(1, "<<T&&weather>>", "weather", answers=['{"city": ', '{"city": "Rome"}'], valid_json=False),
        Step(2, "<<T&&weather>>", "weather"),
        Step(3, FINISH, answers=['{"return_type": "give_answer", "final_answer": "It is'], valid_json=False)])
    done = Transcript("", "b", steps=[Step(0, FINISH, answers=['{"return_type": "give_answer"}'], valid_json=True)])
    assert invalid_json([run, done]) == {"tool": {"turns": 2, "invalid": 1}, "finish": {"turns": 2, "invalid": 1}}


def test_e2e_choose_scores_every_run_on_the_requests_all_finished():
    """benchmarks/e2e_choose.py: run "short" finished only the easy request (right), "long" finished both, the easy
    one wrong and the hard one right. On their own finished requests "short" (call accuracy 1/1) beats "long"
    ((0 + 2) / (1 + 2) = 2/3); on the request both finished (a) "long" has 0/1, so "short" is chosen there too, by
    call accuracy 1.0 against 0.0 — and a third run that finished nothing in common stops the comparison."""

    def call(city):
        return GoldCall("weather", {"city": city})

    def run(uid, *cities, stop="finish"):
        steps = [Step(i, "<<T&&weather>>", "weather", arguments={"city": c}) for i, c in enumerate(cities)]
        return Transcript("", uid, steps=steps + [Step(len(steps), FINISH)], stop_reason=stop)
    a, b = GoldRequest("a", "", [call("Paris")], None, ""), GoldRequest("b", "", [call("Rome"), call("Oslo")], None, "")
    runs = {"short": [run("a", "Paris"), run("b", "Rome", stop="deadline")],
            "long": [run("a", "Lyon"), run("b", "Rome", "Oslo")]}
    result = choose(runs, [a, b])
    assert (result["common_requests"], result["held_out"], result["chosen"]) == (1, 2, "short")
    assert result["rows"]["short"]["call_accuracy"] == 1.0 and result["rows"]["long"]["call_accuracy"] == 0.0
    assert (result["rows"]["short"]["finished"], result["rows"]["long"]["finished"]) == (1, 2)
    # ties on call accuracy go to success: both match b's two calls, x with 3 extra calls (a failure: at most 2)
    tie = choose({"x": [run("b", "Rome", "Lyon", "Paris", "Nice", "Oslo")], "y": [run("b", "Rome", "Oslo")]}, [b])
    assert tie["rows"]["x"]["call_accuracy"] == tie["rows"]["y"]["call_accuracy"] == 1.0
    assert (tie["rows"]["x"]["success_rate"], tie["rows"]["y"]["success_rate"], tie["chosen"]) == (0.0, 1.0, "y")
    assert "| short (chosen) | 1 |" in choice_markdown(result, "complexfuncbench")
    # where it decides: on their own finished requests x (1/2) beats y (2/5); on the two both finished, y (2/2) wins
    r1, r2 = GoldRequest("r1", "", [call("Paris")], None, ""), GoldRequest("r2", "", [call("Rome")], None, "")
    r3 = GoldRequest("r3", "", [call("Oslo"), call("Bern"), call("Graz")], None, "")
    x = [run("r1", "Lyon"), run("r2", "Rome"), run("r3", "Oslo", stop="deadline")]
    y = [run("r1", "Paris"), run("r2", "Rome"), run("r3", "Nice")]
    flip = choose({"x": x, "y": y}, [r1, r2, r3])
    assert flip["common_requests"] == 2 and flip["chosen"] == "y"
    assert (flip["rows"]["x"]["call_accuracy"], flip["rows"]["y"]["call_accuracy"]) == (0.5, 1.0)
    with pytest.raises(SystemExit, match="no request was finished by every run"):
        choose({"p": [run("a", "Paris")], "q": [run("b", "Rome", "Oslo")]}, [a, b])


def test_e2e_breakdown_after_error_by_hand():
    """What followed each failed call: run 1 fails A then retries A right (same tool, matched), fails B, then fails
    C (another tool, another error: neither), then Finish after C's error; run 2 ends on a failed call."""

    def s(i, api, error=None):
        return Step(i, FINISH if api == "Finish" else f"<<T&&{api}>>", api, arguments={}, error=error)
    runs = [Transcript("", "1", steps=[s(0, "A", "x"), s(1, "A"), s(2, "B", "x"), s(3, "C", "x"), s(4, "Finish")]),
            Transcript("", "2", steps=[s(0, "A"), s(1, "B", "x")]),
            Transcript("", "3", steps=[s(0, "A", "x"), s(1, "B")])]   # another tool, and it matched
    assert after_error(runs) == {"errors": 5, "then_finish": 1, "then_same_tool": 1, "then_matched": 2,
                                 "then_nothing": 1}


def test_copied_ids_are_ids_not_words_dates_or_references():
    args = {"vehicle_id": "370878716", "n": 2, "price": 1450, "sort": "BEST", "date": "2024-11-21", "time": "10:00",
            "from": "$var1.data.0.id$", "legs": [{"fromId": "BNE.AIRPORT2"}], "flag": True, "slug": "abc"}
    assert sorted(ids(args)) == ["1450", "370878716", "BNE.AIRPORT2"]


def test_reach_is_the_smallest_budget_that_shows_every_copied_value():
    """A list of 60 cars of about 60 characters each, the gold id in the 40th (about 2,400 characters in): not shown
    by a 2,000-character cut (references.truncate keeps the list's start), shown by 4,000. A value in the request,
    a $var reference (its path is kept by the cut) and a number below 1,000 need nothing; an id found in no
    response is not counted (the model cannot copy it from anywhere)."""
    cars = [{"vehicle_id": str(700000000 + i), "name": f"car number {i}", "supplier": "Budget"} for i in range(60)]
    search = GoldCall("Search_Car_Rentals", {"pick_up_latitude": -27.38}, {}, {"data": {"cars": cars}}, True,
                      used_paths=[("data", "cars", 0, "vehicle_id")])
    gold_id = cars[40]["vehicle_id"]
    assert 2000 < len(json.dumps(search.response).split(gold_id)[0]) < 4000

    def request(args, text="rent a car in Brisbane"):
        return GoldRequest("r", text, [search, GoldCall("Vehicle_Details", args, args, {"ok": 1}, True)], None, "")
    assert reach(request({"vehicle_id": gold_id}), [2000, 4000]) == 4000
    assert unseen(request({"vehicle_id": gold_id}), 2000) == [(1, gold_id)]   # call 1 copies it, unseen at 2,000
    assert unseen(request({"vehicle_id": gold_id}), 4000) == []
    assert reach(request({"vehicle_id": gold_id}), [2000]) is None
    assert reach(request({"vehicle_id": gold_id}), [4000, 2000, 8000]) == 4000   # budgets in any order
    assert reach(request({"vehicle_id": gold_id}), [2000, 4000], order="ids-first") == 2000   # all 60 ids fit
    assert reach(request({"vehicle_id": cars[0]["vehicle_id"]}), [2000, 4000]) == 2000
    assert reach(request({"vehicle_id": gold_id}, text=f"details of car {gold_id}"), [2000]) == 0
    assert reach(request({"vehicle_id": "$var1.data.cars.0.vehicle_id$", "n": 3}), [2000]) == 0
    assert reach(request({"vehicle_id": "999999999"}), [2000]) == 0
    # by_reach in the breakdown: the request above (needs 4,000) run and failed
    run = Transcript("", "r", steps=[Step(0, FINISH)], stop_reason="finish")
    result = breakdown([run], [request({"vehicle_id": gold_id})], [2000, 4000])
    assert result["by_reach"] == {"none needed": {"held_out": 0, "run": 0}, "<= 2000": {"held_out": 0, "run": 0},
                                  "<= 4000": {"held_out": 1, "run": 1, "success_rate": 0.0},
                                  "beyond 4000": {"held_out": 0, "run": 0}}
    assert "| <= 4000 | 1 / 1 | 0.000 |" in markdown(result)
