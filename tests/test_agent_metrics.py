"""The replay executor on hand-made gold sequences with $varN references (NESTFUL placeholders, ComplexFuncBench
recorded responses), argument normalisation, and the end-to-end metrics against values computed by hand."""

import json
import os

import pytest

from toolgen.agent_metrics import DEFINITIONS, e2e_metrics, tool_step_verdicts
from toolgen.data import complexfuncbench
from toolgen.data.gold import GoldCall, GoldRequest
from toolgen.data.matching import normalize
from toolgen.executors import ReplayExecutor, ToolError, read_replay_file
from toolgen.tokens import FINISH
from toolgen.toolset import Tool
from toolgen.transcript import Step, Transcript

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "data_v1")


def tool(api):
    return Tool(f"<<T&&{api}>>", api, {"name": api, "description": "", "required": [], "optional": []})


def test_normalize():
    assert normalize({"city": "  New   YORK ", "n": "1", "x": None}) == normalize({"n": 1, "city": "new york"})
    assert normalize("1.50") == normalize(1.5) == 1.5 and normalize("-240905") == normalize(-240905)
    assert normalize("1e3") == 1000.0 and normalize("12 apples") == "12 apples" and normalize("nan") == "nan"
    assert normalize(True) == normalize("True") != normalize(1)               # booleans are not numbers
    assert normalize([1, "B"]) == [1.0, "b"] != normalize(["b", 1])          # lists keep their order
    assert normalize("$VAR1.Id$") == "$var1.id$"


def test_replay_without_responses_returns_placeholders_and_uses_each_call_once():
    gold = [GoldCall("find_flights", {"origin": "NYC", "date": "2024-05-01"}),
            GoldCall("book_flight", {"flight_id": "$var1.id$", "seats": 2}),
            GoldCall("find_flights", {"origin": "LA", "date": "2024-05-02"})]
    replay = ReplayExecutor(gold)
    find, book = tool("find_flights"), tool("book_flight")
    assert replay.call(find, {"date": "2024-05-02", "origin": " la "}) == {"result": "$var3$",
                                                                         "note": "no recorded response"}
    with pytest.raises(ToolError) as e:   # the same call again: call 3 is used, call 1 is the closest left
        replay.call(find, {"origin": "LA", "date": "2024-05-02"})
    message = str(e.value)
    assert message == ("arguments differ from the closest expected call named find_flights (call 1): different value "
                       "for 'origin'; different value for 'date'")
    assert "NYC" not in message                                    # never the expected values: nothing to copy
    with pytest.raises(ToolError, match=r"\(call 1\): missing 'date'; unexpected 'when'"):
        replay.call(find, {"origin": "NYC", "when": "2024-05-01"})
    assert replay.call(book, {"seats": "2", "flight_id": "$VAR1.id$"})["result"] == "$var2$"   # references kept
    with pytest.raises(ToolError, match=r"^every expected call named book_flight \(1\) was already made$"):
        replay.call(book, {"seats": 2, "flight_id": "$var1.id$"})
    with pytest.raises(ToolError, match="^no call named cancel expected$"):
        replay.call(tool("cancel"), {})
    assert replay.call(find, {"origin": "nyc", "date": "2024-05-01"})["result"] == "$var1$"
    assert replay.matched == [2, 1, 0]


def test_replay_with_recorded_responses_matches_resolved_values():
    hotels = {"hotels": [{"id": i, "name": f"hotel {i}", "blurb": "x" * 50} for i in range(40)], "count": 40}
    gold = [GoldCall("Search_Destination", {"query": "Osaka"}, {"query": "Osaka"}, [{"dest_id": "-240905"}], True),
            GoldCall("Search_Hotels", {"dest_id": "$var1.dest_id$", "adults": 2}, {"dest_id": "-240905", "adults": 2},
                     hotels, True, used_paths=[("count",)])]
    replay = ReplayExecutor(gold, observation_chars=300)
    with pytest.raises(ToolError, match="different value for 'dest_id'"):   # the model saw values, not references
        replay.call(tool("Search_Hotels"), {"dest_id": "$var1.dest_id$", "adults": 2})
    assert replay.call(tool("Search_Destination"), {"query": "osaka"}) == '[{"dest_id": "-240905"}]'
    cut = replay.call(tool("Search_Hotels"), {"dest_id": -240905, "adults": "2"})   # "-240905" == -240905
    assert len(cut) <= 300 and json.loads(cut)["count"] == 40                      # cut, the read path kept
    assert len(json.loads(cut)["hotels"]) < 40
    # cut ids first (prepare --observation-order ids-first): every hotel's id is shown, as in training
    ids_first = ReplayExecutor(gold, observation_chars=600, order="ids-first")
    ids_first.call(tool("Search_Destination"), {"query": "Osaka"})
    cut = json.loads(ids_first.call(tool("Search_Hotels"), {"dest_id": "-240905", "adults": 2}))
    assert [h["id"] for h in cut["hotels"]] == list(range(40)) and cut["count"] == 40
    assert sum("name" in h for h in cut["hotels"]) < 40


def test_replay_file_resolves_as_the_reader_does(tmp_path):
    with open(os.path.join(FIXTURES, "complexfuncbench", "complexfuncbench-data.json")) as f:
        record = json.load(f)[0]
    path = tmp_path / "record.json"
    path.write_text(json.dumps(record))
    text, calls = read_replay_file(str(path))
    expected = complexfuncbench.read(FIXTURES).requests[0]
    assert text == expected.text
    assert [(c.name, c.arguments, c.resolved) for c in calls] == [(c.name, c.arguments, c.resolved)
                                                                  for c in expected.calls]


def step(i, api, arguments=None, valid=True, answered=True):
    token = FINISH if api == "Finish" else f"<<T&&{api}>>"
    return Step(i, token, api, answers=["..."] if answered else [], arguments=arguments, valid_json=valid)


def hand_made():
    """Four requests; the expected numbers below are worked out in the comments."""
    a = GoldRequest("a", "A", [GoldCall("weather", {"city": "Osaka"}), GoldCall("geocode", {"address": "$var1.city$"})],
                    None, "hand")
    b = GoldRequest("b", "B", [GoldCall("weather", {"city": "Paris"}), GoldCall("weather", {"city": "Rome"})],
                    None, "hand")
    c = GoldRequest("c", "C", [GoldCall("add", {"a": 1, "b": "$var1.two$"}, {"a": 1, "b": 2}, {"sum": 3}, True)],
                    None, "hand")
    d = GoldRequest("d", "D", [GoldCall("geocode", {"address": "x"})], None, "hand")
    ta = Transcript("A", "a", stop_reason="finish", steps=[
        step(0, "weather", {"city": "osaka"}),              # tool right, matches a1
        step(1, "add", {"a": 1, "b": 2}, valid=False),      # tool wrong (no add expected); first answer not JSON
        step(2, "geocode", {"address": "$var1.city$"}),     # right, matches a2
        step(3, "Finish", {"return_type": "give_answer"})])  # right: nothing left
    tb = Transcript("B", "b", stop_reason="max_steps", steps=[
        step(0, "weather", {"city": "Rome"}),               # right, matches b2
        step(1, "weather", None, valid=False)])             # right (b1 left); invalid after repair: not executed
    tc = Transcript("C", "c", stop_reason="finish", steps=[
        step(0, "add", {"b": "2", "a": 1.0}),               # right, matches the RESOLVED c1
        step(1, "Finish", {"return_type": "give_answer"})])
    td = Transcript("D", "d", stop_reason="finish", steps=[
        step(0, "geocode", {"address": "y"}), step(1, "geocode", {"address": "z"}),   # right, no match (x2)
        step(2, "weather", {"city": "q"}),                                              # wrong
        step(3, "geocode", {"address": "X"}), step(4, "Finish", {})])                   # right, match; right
    return [ta, tb, tc, td], [a, b, c, d]


def test_e2e_metrics_by_hand():
    transcripts, requests = hand_made()
    m = e2e_metrics(transcripts, requests)
    # success: A yes (1 extra call), B no (b1 unmatched, no Finish), C yes, D no (4 calls for 1: 3 extra)
    assert m["e2e/success_rate"] == pytest.approx(2 / 4)
    assert m["e2e/call_accuracy"] == pytest.approx((2 + 1 + 1 + 1) / (2 + 2 + 1 + 1))
    # tool choice per step: A T F T T, B T T, C T T, D T T F T T
    assert m["e2e/tool_selection_accuracy"] == pytest.approx(11 / 13)
    assert m["e2e/invalid_json_rate"] == pytest.approx(2 / 13) and m["e2e/argument_turns"] == 13
    assert m["e2e/avg_steps"] == pytest.approx((4 + 2 + 2 + 5) / 4)
    assert m["e2e/finish_rate"] == pytest.approx(3 / 4)
    # executed sequences: A 3 calls for 2, B 1 for 2, C equal, D 4 for 1
    assert m["e2e/full_sequence_accuracy"] == pytest.approx(1 / 4)
    # F1: A P=2/3 R=1 -> 0.8; B P=1 R=1/2 -> 2/3; C 1; D P=1/4 R=1 -> 0.4
    assert m["e2e/call_f1"] == pytest.approx((0.8 + 2 / 3 + 1 + 0.4) / 4)
    assert (m["e2e/requests"], m["e2e/gold_calls"]) == (4, 6)
    assert {k for k in m if k in DEFINITIONS} == set(DEFINITIONS)
    # a transcript round trip through JSON scores the same; pairing is checked
    reloaded = [Transcript.from_dict(json.loads(json.dumps(t.to_dict()))) for t in transcripts]
    assert e2e_metrics(reloaded, requests) == m
    with pytest.raises(ValueError, match="transcript 'a' paired with request 'b'"):
        e2e_metrics(transcripts[:2], requests[1:3])
    assert e2e_metrics([], [])["e2e/success_rate"] == 0.0


def test_step_tool_verdicts_in_order_and_in_any_order_by_hand():
    """Reference a, b, c, b; predicted b, b, c, a. In order, steps 2 and 3 match. In any order, against the calls
    left from each step on: step 1 b in (a, b, c, b) yes; step 2 b in (b, c, b) yes; step 3 c in (c, b) yes; step 4
    a in (b) no: a was the first step's call."""
    in_order, any_order = tool_step_verdicts(["a", "b", "c", "b"], ["b", "b", "c", "a"])
    assert in_order == [False, True, True, False]
    assert any_order == [True, True, True, False]
    assert tool_step_verdicts([], []) == ([], [])
