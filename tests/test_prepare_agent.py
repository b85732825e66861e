"""The agent stage's honesty rules (data/quality.py, stages.agent_example) on a hand-made ToolBench input whose
counts were made by hand: no placeholder thought, nothing missing with loss, markers for what was not recorded,
per-source counts in prepare_report.json, --min-complete, a test split of complete trajectories only."""

import json
import os

import pytest

from toolgen.data.stages import ASK_ACTION, ASK_INPUT, MISSING_ARGUMENTS, NO_OBSERVATION
from toolgen.prepare import SAMPLE_DIR, main, prepare
from toolgen.tokens import FINISH


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def api(name, required=()):
    return {"category_name": "Cat", "tool_name": "T", "api_name": name, "api_description": f"does {name}",
            "required_parameters": [{"name": p, "type": "STRING", "description": p} for p in required],
            "optional_parameters": []}


def call(name, arguments, content=""):
    return {"role": "assistant", "content": content, "function_call": {"name": name, "arguments": arguments}}


def tool_node(message, following=()):
    return {"role": "tool", "message": message, "next": list(following)}


def chain(*nodes):
    """tooleval's answer_details: each node's `next` holds the following one (the last branch is read)."""
    for node, following in zip(nodes, nodes[1:]):
        node["next"] = [following]
    return [{"role": "system", "message": "", "next": [nodes[0]]}]


# Query 1, a DFS answer: 2 calls + Finish; 1 real thought; both arguments complete (a takes no parameters, so "{}"
# is its real call); 1 observation (b's came back empty); a final answer.
DFS_1 = {"answer_generation": {"valid_data": True, "query": "query number 1", "train_messages": [[
    {"role": "user", "content": "query number 1"},
    call("a_for_t", "{}", "Thought: look it up"), {"role": "function", "content": "ok"},
    call("b_for_t", '{"city": "Paris"}'), {"role": "function", "content": ""},
    call("Finish", '{"return_type": "give_answer", "final_answer": "done"}')]]}}
# Query 3, a DFS answer: 1 call + give up; 2 thoughts; complete; 1 observation; giving up is a complete Finish.
DFS_3 = {"answer_generation": {"valid_data": True, "query": "query number 3", "train_messages": [[
    call("a_for_t", "{}", "Thought: try a"), {"role": "function", "content": "fine"},
    call("Finish", '{"return_type": "give_up_and_restart"}', "Thought: no luck")]]}}
# tooleval answers (tool messages cut at 100 characters upstream, so no response survives):
#   query 2: b with complete arguments; b cut inside the arguments (not recorded); b with "{}" although b requires
#     city (no real target); Finish cut: 3 calls, 1 complete, 0 observations, no answer; share 1/3.
#   query 1 again, longer (3 calls) but cut: the complete DFS answer is kept instead.
TOOLEVAL = {
    "q2": {"query": "query number 2", "answer": {"answer_details": chain(
        tool_node("{'name': 'b_for_t', 'arguments': '{\"city\": \"Lyon\"}', 'response': '{\"error\": \"\", \"resp"),
        tool_node("{'name': 'b_for_t', 'arguments': '{\"ci"),
        tool_node("{'name': 'b_for_t', 'arguments': '{}', 'response': '{\"error\": \"missing city\", \"re"),
        tool_node("{'name': 'Finish', 'arguments': '{\"return_type\": \"give_answer\", \"final_answer\": \"It is"))}},
    "q1": {"query": "query number 1", "answer": {"answer_details": chain(
        *[tool_node("{'name': 'b_for_t', 'argum") for _ in range(3)],
        tool_node("{'name': 'Finish', 'arguments': '{\"return_type\": \"give_answer\", \"final_answer\": \"x"))}}}
# By hand (queries 1, 2, 3): steps 3 + 4 + 2, calls 2 + 3 + 1, thoughts 1 + 0 + 2, complete arguments 2 + 1 + 1,
# observations 1 + 0 + 1, final answers (or giving up) 1 + 0 + 1.
COUNTS = {"trajectories": 3, "steps": 9, "calls": 6, "steps_with_thought": 3, "calls_with_complete_arguments": 4,
          "calls_with_observation": 2, "finish_with_answer": 2}


@pytest.fixture
def root(tmp_path):
    write(os.path.join(tmp_path, "catalog.jsonl"), json.dumps(api("a")) + "\n" + json.dumps(api("b", ["city"])) + "\n")
    write(os.path.join(tmp_path, "instruction", "G1_query.json"),
          [{"query": f"query number {i}", "query_id": i, "relevant APIs": [["T", "a"]]} for i in range(4)])
    write(os.path.join(tmp_path, "answer", "G1_answer", "1_ChatGPT_DFS_woFilter_w2.json"), DFS_1)
    write(os.path.join(tmp_path, "answer", "G1_answer", "3_ChatGPT_DFS_woFilter_w2.json"), DFS_3)
    write(os.path.join(tmp_path, "answer", "tooleval", "G1_instruction.json"), TOOLEVAL)
    return str(tmp_path)


def by_query(examples):
    return {ex["query"]: ex["messages"] for ex in examples}


def assistant(messages):
    return [(m["content"], m["loss"]) for m in messages if m["role"] == "assistant"]


def test_no_placeholder_thought_and_nothing_missing_with_loss(root):
    out = by_query(prepare(root, test_fraction=0.0)["agent_tuning.json"])
    assert assistant(out["query number 1"]) == [
        ("Thought: look it up", True), ("<<T&&a>>", True), ("{}", True),      # a takes no parameters: {} is its call
        ("<<T&&b>>", True), ('{"city": "Paris"}', True),                      # no thought: no thought message
        (FINISH, True), ('{"return_type": "give_answer", "final_answer": "done"}', True)]
    # a step without a thought starts at the action question, right after the previous observation
    roles = [(m["role"], m["content"]) for m in out["query number 1"]]
    i = roles.index(("tool", "ok"))
    assert roles[i + 1] == ("user", ASK_ACTION) and roles[i + 2] == ("assistant", "<<T&&b>>")
    assert [m["content"] for m in out["query number 1"] if m["role"] == "tool"] == ["ok", NO_OBSERVATION]
    assert assistant(out["query number 2"]) == [
        ("<<T&&b>>", True), ('{"city": "Lyon"}', True),
        ("<<T&&b>>", True), (MISSING_ARGUMENTS, False),                       # cut: a marker, no loss
        ("<<T&&b>>", True), ("{}", False),                                    # b needs city: shown, no loss
        (FINISH, True), (MISSING_ARGUMENTS, False)]                           # the answer was cut
    assert [m["content"] for m in out["query number 2"] if m["role"] == "tool"] == [NO_OBSERVATION] * 3
    assert assistant(out["query number 3"])[-2:] == [(FINISH, True), ('{"return_type": "give_up_and_restart"}', True)]
    for messages in out.values():
        assert not [m for m in messages if m["content"] == "Thought: next step."]
        assert all(m["content"].startswith("Thought: ") and len(m["content"]) > len("Thought: ")
                   for m in messages if m["role"] == "assistant" and "Thought" in m["content"])
        # the documentation question is always followed by the arguments; tool messages never carry loss
        assert all(messages[i + 1]["role"] == "assistant" for i, m in enumerate(messages)
                   if m["content"].startswith(ASK_INPUT))
        assert not [m for m in messages if m["role"] != "assistant" and m["loss"]]


def test_report_counts_per_source(root):
    report = prepare(root, test_fraction=0.0)["prepare_report.json"]
    assert report["sources"] == {"toolbench": {**COUNTS, "train": 3, "test": 0, "dropped_below_min_complete": 0,
                                               "dropped_incomplete_test": 0}}
    assert report["skipped"] == {"duplicate_trajectory_for_query": 1}         # the longer, cut tooleval tree
    assert report["skipped_examples"]["duplicate_trajectory_for_query"][0].endswith("G1_instruction.json record q1")


def test_min_complete_drops_what_falls_short(root):
    for fraction, kept in ((0.0, 3), (0.3, 3), (0.4, 2), (1.0, 2)):           # query 2: 1 of 3 calls complete
        out = prepare(root, test_fraction=0.0, min_complete=fraction)
        assert len(out["agent_tuning.json"]) == kept, fraction
        counts = out["prepare_report.json"]["sources"]["toolbench"]
        assert counts["dropped_below_min_complete"] == 3 - kept and counts["trajectories"] == kept
        assert out["prepare_report.json"]["skipped"].get("trajectory_below_min_complete", 0) == 3 - kept
    assert "query number 2" not in by_query(prepare(root, test_fraction=0.0, min_complete=0.4)["agent_tuning.json"])


def test_the_test_split_holds_complete_trajectories_only(root):
    out = prepare(root, test_fraction=1.0)
    assert sorted(by_query(out["agent_test.json"])) == ["query number 1", "query number 3"]
    counts = out["prepare_report.json"]["sources"]["toolbench"]
    assert (counts["test"], counts["train"], counts["dropped_incomplete_test"]) == (2, 0, 1)
    assert out["prepare_report.json"]["skipped"]["trajectory_incomplete_in_test_split"] == 1
    for messages in by_query(out["agent_test.json"]).values():       # every argument step is a scored target
        assert all(messages[i + 1]["loss"] for i, m in enumerate(messages) if m["content"].startswith(ASK_INPUT))
    # a choice, not bad input: --strict does not stop on it (it would on the duplicate, so that goes first)
    write(os.path.join(root, "answer", "tooleval", "G1_instruction.json"), {"q2": TOOLEVAL["q2"]})
    assert len(prepare(root, test_fraction=1.0, strict=True)["agent_test.json"]) == 2


def test_min_complete_on_the_command_line(root, tmp_path):
    out = tmp_path / "out"
    main(["--toolbench", root, "--out", str(out), "--test-fraction", "0", "--min-complete", "0.4"])
    with open(out / "prepare_report.json") as f:
        assert json.load(f)["sources"]["toolbench"]["dropped_below_min_complete"] == 1
    with pytest.raises(SystemExit):
        main(["--toolbench", root, "--out", str(out), "--min-complete", "1.5"])


def test_the_sample_keeps_its_real_thoughts():
    """The shipped sample records every part: each step keeps its thought, with loss, and everything is complete."""
    out = prepare(SAMPLE_DIR)
    for ex in out["agent_tuning.json"] + out["agent_test.json"]:
        messages = ex["messages"]
        actions = [i for i, m in enumerate(messages) if m["role"] == "user" and m["content"] == ASK_ACTION]
        assert all(messages[i - 1]["role"] == "assistant" and messages[i - 1]["content"].startswith("Thought: ")
                   and messages[i - 1]["loss"] for i in actions)
        assert all(m["loss"] for m in messages if m["role"] == "assistant")
    counts = out["prepare_report.json"]["sources"]["toolbench"]
    assert counts["steps_with_thought"] == counts["steps"] == 174
    assert counts["calls_with_complete_arguments"] == counts["calls_with_observation"] == counts["calls"] == 92


def test_what_counts_as_complete():
    from toolgen.data import quality
    from toolgen.data.toolbench import Api, Step
    needs_city = Api("Cat", "T", "b", required=(json.dumps({"name": "city"}),))
    free = Api("Cat", "T", "a")
    assert quality.arguments_complete(Step("b", '{"city": "Oslo"}'), needs_city)
    assert not quality.arguments_complete(Step("b", '{"city": "Os'), needs_city)          # cut: not JSON
    assert not quality.arguments_complete(Step("b", '["Oslo"]'), needs_city)              # not an object
    assert not quality.arguments_complete(Step("b", "{}"), needs_city)
    assert quality.arguments_complete(Step("a", "{}"), free)
    assert not quality.arguments_complete(Step("b", '{"city": "Oslo"}', ambiguous=True), needs_city)
    finish = [('{"return_type": "give_answer", "final_answer": "Oslo"}', True), ('{"return_type": "give_up"}', True),
              ('{"return_type": "give_answer"}', False), ('{"return_type": "give_answer", "final_answer": " "}', False),
              ("{}", False), (None, False)]
    assert [quality.arguments_complete(Step("Finish", text), None) for text, _ in finish] == [ok for _, ok in finish]
    assert not quality.has_observation(Step("b", "{}", observation=None))
    assert not quality.has_observation(Step("b", "{}", observation="  "))
    assert quality.thought(Step("b", "{}", thought="  ")) == ""
