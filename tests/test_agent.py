"""The agent loop (toolgen/agent.py) with a scripted policy: layout, repair, failing / hanging tools, the context
budget, the tool_scorer hook, the e2e time limit; the callable and HTTP executors. The tiny model and the command:
tests/test_agent_cli.py. Replay and the end-to-end metrics: tests/test_agent_metrics.py."""

import json
import os
import time
import urllib.error

import pytest
import torch

from toolgen import agent as agent_mod
from toolgen.agent import Agent, AgentConfig
from toolgen.observations import REMOVED, fit_context, observation_text
from toolgen.data import SAMPLE_DIR, stages
from toolgen.data.stages import AGENT_SYSTEM, ASK_ACTION, ASK_INPUT
from toolgen.data.toolbench import read_api_jsonl
from toolgen.executors import CallableExecutor, HttpExecutor, ToolError
from toolgen.tokens import FINISH
from toolgen.toolset import AgentError, Tool, Toolset, parse_documentation

WEATHER, GEO, ADD = "<<Sky&&weather>>", "<<Geo&&geocode>>", "<<Calc&&add>>"
ANSWER = '{"return_type": "give_answer", "final_answer": "21 C"}'


def doc(name, required=(), optional=()):
    return {"name": name, "description": f"{name} things", "required": list(required), "optional": list(optional)}


TOOLS = Toolset([Tool(WEATHER, "weather", doc("weather", ["city"])), Tool(GEO, "geocode", doc("geocode", ["address"])),
                 Tool(ADD, "add", doc("add", ["a", "b"]))], "hand-made tools")


class ScriptedPolicy:
    """A stand-in for the model: the action turns take the next scripted token, the text turns the next scripted
    text. Tokens are counted as characters. Every prompt is recorded with the room it asked for."""

    def __init__(self, actions, texts):
        self.actions, self.texts, self.prompts = list(actions), list(texts), []

    def check_tokens(self, tokens):
        self.tokens = list(tokens)

    def action_logprobs(self, messages, tokens):
        self.prompts.append((list(messages), 1))   # a copy: the loop appends to its list
        want = self.actions.pop(0)
        return torch.log_softmax(torch.tensor([5.0 if t == want else 0.0 for t in tokens]), -1)

    def generate(self, messages, max_new_tokens):
        self.prompts.append((list(messages), max_new_tokens))
        return self.texts.pop(0)

    def count_tokens(self, messages):
        return sum(len(m["content"]) for m in messages)


def run(actions, texts, functions=None, request="Weather in Osaka?", scorer=None, **config):
    policy = ScriptedPolicy(actions, texts)
    executor = CallableExecutor(functions or {"weather": lambda city: {"temp_c": 21, "city": city}})
    transcript = Agent(policy, TOOLS, executor, AgentConfig(**config), scorer).run(request, "r1")
    return transcript, policy


def test_layout_as_in_training_without_and_with_thoughts():
    t, _ = run([WEATHER, FINISH], ['{"city": "Osaka"}', ANSWER])
    assert t.messages == [
        {"role": "system", "content": AGENT_SYSTEM}, {"role": "user", "content": "Weather in Osaka?"},
        {"role": "user", "content": ASK_ACTION}, {"role": "assistant", "content": WEATHER},
        {"role": "user", "content": ASK_INPUT + json.dumps(doc("weather", ["city"]))},
        {"role": "assistant", "content": '{"city": "Osaka"}'},
        {"role": "tool", "content": '{"temp_c": 21, "city": "Osaka"}'},
        {"role": "user", "content": ASK_ACTION}, {"role": "assistant", "content": FINISH},
        {"role": "user", "content": ASK_INPUT + json.dumps(stages.FINISH_DOC)}, {"role": "assistant", "content": ANSWER}]
    assert (t.stop_reason, t.final_answer, t.uid, len(t.steps)) == ("finish", "21 C", "r1", 2)
    assert t.steps[0].arguments == {"city": "Osaka"} and t.steps[0].api == "weather" and t.steps[1].api == "Finish"
    assert t.steps[0].candidates[0][0] == WEATHER and len(t.steps[0].candidates) == 3

    seen = []
    def scorer(request, thought, candidates, logprobs):   # the retrieval prior's hook: here it overrides the model
        seen.append((request, thought, candidates, logprobs.clone()))
        return torch.tensor([10.0 if c == (GEO if len(seen) == 1 else FINISH) else 0.0 for c in candidates])
    t, policy = run([WEATHER, WEATHER], ["Thought: find the place", '{"address": "Osaka"}', "no prefix", ANSWER],
                    {"geocode": lambda address: [34.7, 135.5]}, scorer=scorer, think=True)
    assert t.messages[2] == {"role": "assistant", "content": "Thought: find the place"}
    assert t.messages[8] == {"role": "assistant", "content": "Thought: no prefix"}
    assert [s.token for s in t.steps] == [GEO, FINISH] and t.steps[0].observation == "[34.7, 135.5]"
    assert seen[0][:3] == ("Weather in Osaka?", "find the place", [WEATHER, GEO, ADD, FINISH])
    assert seen[0][3].argmax() == 0 and seen[0][3].shape == (4,)   # the model's log-probs over the candidates
    with pytest.raises(AgentError, match="tool_scorer returned scores of shape"):
        run([WEATHER], [], scorer=lambda *a: torch.zeros(2))


class Opaque:
    def __str__(self):
        return "an opaque thing"


def test_tool_that_raises_or_returns_non_json_is_an_observation_and_the_loop_goes_on():
    def boom(city):
        raise ValueError("no such city")
    t, _ = run([WEATHER, ADD, GEO, FINISH], ['{"city": "Atlantis"}', '{"a": 1, "b": 2}', '{"address": "x"}', ANSWER],
               {"weather": boom, ADD: lambda a, b: {a, b}, "geocode": lambda address: Opaque()})
    assert t.steps[0].error == "ValueError: no such city"
    assert json.loads(t.steps[0].observation) == {"error": "ValueError: no such city"}
    assert t.steps[1].observation == "{1, 2}" and t.steps[1].error is None            # a set: its str()
    assert t.steps[2].observation == "an opaque thing"
    assert t.stop_reason == "finish" and len(t.steps) == 4
    # a wrong keyword is the tool's TypeError, an unmapped tool an error observation
    t, _ = run([WEATHER, ADD, FINISH], ['{"city": "x", "days": 3}', '{"a": 1, "b": 2}', ANSWER])
    assert "TypeError" in t.steps[0].error and t.steps[1].error == f"no function is mapped to {ADD}"
    assert observation_text("plain text", 5) == "plain [cut]" and observation_text('{"a": 1}', 100) == '{"a": 1}'
    assert json.loads(observation_text({"k": list(range(100))}, 50))   # cut, still JSON
    # a Python tool's result cut ids first (AgentConfig.observation_order): every element's id survives the cut
    rows = [{"id": i, "blurb": "x" * 40} for i in range(6)]
    t, _ = run([WEATHER, FINISH], ['{"city": "x"}', ANSWER], {"weather": lambda city: rows}, observation_chars=120,
               observation_order="ids-first")
    assert [r["id"] for r in json.loads(t.steps[0].observation)] == list(range(6))
    with pytest.raises(AgentError, match="observation_order 'bfs': one of document, ids-first"):
        run([WEATHER], [], observation_order="bfs")


def test_hanging_tool_times_out_within_the_timeout():
    start = time.perf_counter()
    t, _ = run([WEATHER, FINISH], ['{"city": "x"}', ANSWER], {"weather": lambda city: time.sleep(5)}, timeout=0.3)
    assert time.perf_counter() - start < 2.0
    assert t.steps[0].timed_out and 0.25 < t.steps[0].seconds < 1.5
    assert json.loads(t.steps[0].observation) == {"error": "timed out after 0.3 s (the call was abandoned)"}
    assert t.stop_reason == "finish"


def test_one_repair_turn():
    calls = []
    functions = {"weather": lambda city: calls.append(city) or "sunny"}
    # not JSON, then repaired
    t, _ = run([WEATHER, FINISH], ["city = Osaka", '{"city": "Osaka"}', ANSWER], functions)
    s = t.steps[0]
    assert (s.valid_json, s.repaired, s.arguments, s.answers) == (False, True, {"city": "Osaka"},
                                                                 ["city = Osaka", '{"city": "Osaka"}'])
    assert t.messages[6] == {"role": "user", "content": "That input is not valid: not JSON (Expecting value at "
                             "character 0). Give the input again as one JSON object with the required parameters city."}
    assert (t.invalid_json, t.repairs, t.failed_arguments, calls) == (1, 1, 0, ["Osaka"])
    # valid JSON without a required parameter: repaired, but not invalid JSON
    t, _ = run([WEATHER, FINISH], ['{"town": "Osaka"}', '{"city": "Osaka"}', ANSWER], functions)
    assert t.steps[0].problems == ["missing required parameter(s): city"]
    assert (t.steps[0].valid_json, t.invalid_json, t.repairs, t.failed_arguments) == (True, 0, 1, 0)
    # still invalid after the repair: counted, no call, the loop goes on
    t, _ = run([WEATHER, FINISH], ["[1]", "{oops", ANSWER], functions)
    s = t.steps[0]
    assert s.arguments is None and s.problems == ["JSON list, not an object", "not JSON (Expecting property name "
                                                  "enclosed in double quotes at character 1)"]
    assert json.loads(s.observation)["error"].startswith("no call was made: invalid arguments after one repair")
    assert (t.invalid_json, t.repairs, t.failed_arguments, calls, t.stop_reason) == (1, 1, 1, ["Osaka"] * 2, "finish")
    # Finish without arguments JSON: the raw text is the answer
    t, _ = run([FINISH], ["It is 21 C", "still text"])
    assert t.final_answer == "still text" and t.stop_reason == "finish"


def test_unknown_tools_in_the_mapping_fail_before_the_run():
    policy = ScriptedPolicy([WEATHER], ['{"city": "x"}'])
    with pytest.raises(AgentError) as e:
        Agent(policy, TOOLS, CallableExecutor({"<<Nope&&x>>": print, "weather": print, "teleport": print}))
    assert "unknown tool(s): <<Nope&&x>>, teleport" in str(e.value)
    assert "Known tools of hand-made tools: <<Calc&&add>>, <<Geo&&geocode>>, <<Sky&&weather>>, add" in str(e.value)
    assert policy.prompts == []
    twins = Toolset([Tool("<<A&&search>>", "search", doc("search")), Tool("<<B&&search>>", "search", doc("search"))])
    with pytest.raises(AgentError, match=r"API names of several tools \(use the token\): search \(<<A&&search>>, "):
        CallableExecutor({"search": print}).check(twins)
    with pytest.raises(AgentError, match="expected a mapping"):
        CallableExecutor({"search": "not callable"})


def test_max_steps_and_context_budget():
    t, _ = run([WEATHER] * 3, ['{"city": "x"}'] * 3, max_steps=3)
    assert (t.stop_reason, len(t.steps), t.final_answer) == ("max_steps", 3, None)

    big = {"weather": lambda city: {"data": "x" * 500}}
    budget = 1600
    t, policy = run([WEATHER] * 3 + [FINISH], ['{"city": "a"}'] * 3 + [ANSWER], big, context_budget=budget,
                    argument_tokens=128)   # the budget's arithmetic below assumes this room for an answer
    assert t.stop_reason == "finish"
    full = t.steps[0].observation
    assert len(full) > 500 and all(m["content"] == full for m in t.messages if m["role"] == "tool")  # kept whole
    for prompt, room in policy.prompts:
        assert policy.count_tokens(prompt) + room <= budget and prompt[:2] == t.messages[:2]   # request untouched
    shortened = [p for p, _ in policy.prompts if any(m["role"] == "tool" and m["content"] != full for m in p)]
    assert shortened
    first = [m["content"] for m in shortened[0] if m["role"] == "tool"]
    assert len(first[0]) <= 210 and first[-1] == full      # the oldest is shortened first, the newest kept
    # a budget the request alone exceeds: nothing can run
    t, _ = run([WEATHER], [], context_budget=100)
    assert (t.stop_reason, t.steps) == ("context_budget", [])
    messages = [{"role": "user", "content": "q"}, {"role": "tool", "content": "x" * 100},
                {"role": "tool", "content": "y"}]
    assert fit_context(messages, lambda m: sum(len(x["content"]) for x in m) < 60)[1]["content"] == REMOVED
    assert fit_context(messages, lambda m: False) is None
    # shortened in the loop's order: ids first keeps every row's id in the 200 characters, the document's order not
    rows = json.dumps([{"id": i, "blurb": "x" * 40} for i in range(12)])
    old = [{"role": "user", "content": "q"}, {"role": "tool", "content": rows}, {"role": "tool", "content": "y"}]
    short = lambda m: len(m[1]["content"]) < 300   # noqa: E731
    assert [r["id"] for r in json.loads(fit_context(old, short, "ids-first")[1]["content"])] == list(range(12))
    assert len(json.loads(fit_context(old, short)[1]["content"])) < 12


def test_block_repeats_keeps_a_call_made_twice_in_a_row_from_the_next_turn():
    """block_repeats: after the same call (tool and arguments) twice in a row, the tool is not offered at the next
    action turn (the next best one is taken); another argument, or the setting off, changes nothing."""
    class Stuck(ScriptedPolicy):   # the model always wants the weather tool first, then Finish
        def action_logprobs(self, messages, tokens):
            self.prompts.append((list(messages), 1))
            return torch.log_softmax(torch.tensor([5.0 if t == WEATHER else 2.0 if t == FINISH else 0.0
                                                   for t in tokens]), -1)

    def stuck_run(texts, **config):
        policy = Stuck([], texts)
        executor = CallableExecutor({"weather": lambda city: {"temp_c": 21}})
        return Agent(policy, TOOLS, executor, AgentConfig(max_steps=4, **config)).run("Weather in Osaka?", "r1")

    same = ['{"city": "Osaka"}', '{"city":"Osaka"}', ANSWER]
    t = stuck_run(same, block_repeats=True)
    assert [s.token for s in t.steps] == [WEATHER, WEATHER, FINISH] and t.stop_reason == "finish"
    assert t.steps[2].candidates[0][0] == FINISH and [WEATHER, float("-inf")] not in t.steps[2].candidates[:1]
    t = stuck_run(same[:2] + ['{"city": "Osaka"}'] * 2)   # off: the loop goes on calling it
    assert [s.token for s in t.steps] == [WEATHER] * 4 and t.stop_reason == "max_steps"
    t = stuck_run(['{"city": "Osaka"}', '{"city": "Kyoto"}', '{"city": "Kyoto"}', ANSWER], block_repeats=True)
    assert [s.token for s in t.steps] == [WEATHER, WEATHER, WEATHER, FINISH]   # blocked only after Kyoto twice


def test_documentation_round_trip_and_tool_files(sample_data, tmp_path):
    apis = read_api_jsonl(os.path.join(SAMPLE_DIR, "catalog.jsonl"))
    for api in apis:   # the input doc the loop shows is the training text, for every sample API
        assert json.dumps(parse_documentation(stages.api_documentation(api), "x")) == stages.api_input_doc(api)
    prepared = Toolset.load(sample_data)
    catalog = Toolset.load(os.path.join(SAMPLE_DIR, "catalog.jsonl"))
    assert prepared.tokens == catalog.tokens and len(catalog) == 72
    token = "<<SkyCast&&daily forecast>>"
    assert prepared.get(token).input_doc == catalog.get(token).input_doc == stages.api_input_doc(
        next(a for a in apis if a.api == "daily forecast"))
    assert catalog.get(token).spec["url"] == "https://skycast.example/daily_forecast" and prepared.get(token).spec == {}
    stage = tmp_path / "agent_tuning"   # a stage folder: names only, the docs from the data its stage.json names
    stage.mkdir()
    (stage / "tool_tokens.json").write_text(json.dumps([token, FINISH]))
    (stage / "stage.json").write_text(json.dumps({"data_file": os.path.join(sample_data, "agent_tuning.json")}))
    assert Toolset.load(str(stage)).tokens == [token]
    (stage / "stage.json").write_text(json.dumps({"data_file": str(tmp_path / "gone" / "agent_tuning.json")}))
    with pytest.raises(AgentError, match="lists token names only and .*gone/tool_tokens.json"):
        Toolset.load(str(stage))
    (tmp_path / "x.json").write_text('{"a": 1}')
    with pytest.raises(AgentError, match="x.json: not a tool_tokens.json"):
        Toolset.load(str(tmp_path / "x.json"))


class FakeResponse:
    def __init__(self, body):
        self.body = body

    def read(self, n=-1):
        return self.body[:n] if n >= 0 else self.body

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_http_executor_builds_requests_without_sending():
    tools = Toolset([
        Tool("<<alpha&&rate>>", "rate", doc("rate"),
             {"method": "GET", "host": "alpha.p.rapidapi.com", "endpoint": "/query"}),
        Tool("<<shop&&order>>", "order", doc("order"),
             {"method": "POST", "url": "https://shop.example/s/{shop_id}/orders"}),
        Tool("<<bare&&x>>", "x", doc("x"))])
    sent = []
    def opener(request, timeout):
        sent.append((request, timeout))
        return FakeResponse(b'{"rate": 1.1}' if "alpha" in request.full_url else b"ok")
    ex = HttpExecutor(env={"RAPIDAPI_KEY": "k3y"}, opener=opener, timeout=7)
    ex.check(tools)
    assert ex.call(tools.get("<<alpha&&rate>>"), {"from": "USD", "n": 2}) == {"rate": 1.1}
    request, timeout = sent[0]
    assert request.full_url == "https://alpha.p.rapidapi.com/query?from=USD&n=2" and request.get_method() == "GET"
    assert request.get_header("X-rapidapi-key") == "k3y"
    assert request.get_header("X-rapidapi-host") == "alpha.p.rapidapi.com"
    assert timeout == 7 and request.data is None
    assert ex.call(tools.get("<<shop&&order>>"), {"shop_id": "a b", "item": "pen"}) == "ok"
    request = sent[1][0]
    assert request.full_url == "https://shop.example/s/a%20b/orders" and request.get_method() == "POST"
    assert json.loads(request.data) == {"item": "pen"} and request.get_header("X-rapidapi-key") is None
    with pytest.raises(ToolError, match="no HTTP spec for <<bare&&x>>"):
        ex.call(tools.get("<<bare&&x>>"), {})
    def refuse(request, timeout):
        raise urllib.error.HTTPError(request.full_url, 429, "Too Many", {}, None)
    refusing = HttpExecutor(env={"RAPIDAPI_KEY": "k"}, opener=refuse)
    refusing.check(tools)
    with pytest.raises(ToolError, match="HTTP 429 from https://alpha.p.rapidapi.com/query"):
        refusing.call(tools.get("<<alpha&&rate>>"), {})
    with pytest.raises(AgentError, match="RAPIDAPI_KEY is not set"):
        HttpExecutor(env={}).check(tools)
    with pytest.raises(AgentError, match="has no HTTP specs"):
        HttpExecutor(env={}).check(TOOLS)


def test_e2e_time_limit_scores_only_the_requests_that_finished(monkeypatch):
    """run_e2e(time_limit=): past the deadline no request starts and a running one stops before its next step
    (stop_reason "deadline"); the metrics cover the finished requests and requests_cut counts the others. Each model
    call takes one second of a fake clock."""
    from toolgen.agent import run_e2e
    from toolgen.data.gold import GoldCall, GoldRequest
    clock = [0.0]
    monkeypatch.setattr(agent_mod, "monotonic", lambda: clock[0])

    class Slow(ScriptedPolicy):
        def action_logprobs(self, messages, tokens):
            clock[0] += 1
            return super().action_logprobs(messages, tokens)

        def generate(self, messages, max_new_tokens):
            clock[0] += 1
            return super().generate(messages, max_new_tokens)
    policy = Slow([WEATHER, FINISH, WEATHER], ['{"city": "Osaka"}', ANSWER, '{"city": "Oslo"}'])
    requests = [GoldRequest(f"r{i}", f"Weather in {city}?", [GoldCall("weather", {"city": city})], None, "hand")
                for i, city in enumerate(["Osaka", "Oslo", "Lima"])]
    transcripts, m = run_e2e(None, None, requests, TOOLS, AgentConfig(max_steps=3), policy=policy, time_limit=5)
    # r0: 4 model calls, done at t=4; r1 starts at 4 (< 5) and would take its second step at 6: cut; r2 never starts
    assert [(t.uid, t.stop_reason, len(t.steps)) for t in transcripts] == [("r0", "finish", 2), ("r1", "deadline", 1)]
    assert (m["e2e/requests"], m["e2e/requests_cut"], m["e2e/success_rate"], m["e2e/call_accuracy"]) == (1, 2, 1.0, 1.0)
    clock[0], policy.actions, policy.texts = 0.0, [WEATHER, FINISH], ['{"city": "Osaka"}', ANSWER]
    transcripts, m = run_e2e(None, None, requests[:1], TOOLS, AgentConfig(max_steps=3), policy=policy)
    assert (m["e2e/requests"], m["e2e/requests_cut"], transcripts[0].stop_reason) == (1, 0, "finish")   # no limit


def test_context_budget_defaults_to_what_the_stage_trained_at(tmp_path):
    """No budget given: 4096, or the agent stage's max_length when larger (a stage trained on whole trajectories at
    8,192 would otherwise see its histories cut); a given budget wins, 0 meaning no limit."""
    from toolgen.toolset import context_budget
    for trained, expected in ((8192, 8192), (2048, 4096)):
        stage = tmp_path / str(trained)
        stage.mkdir()
        (stage / "config.json").write_text(json.dumps({"stages": {"agent": {"max_length": trained}}}))
        assert context_budget(None, str(stage)) == expected
        assert context_budget(3000, str(stage)) == 3000 and context_budget(0, str(stage)) is None
    assert context_budget(None, str(tmp_path / "missing")) == 4096 and context_budget(None, "") == 4096

