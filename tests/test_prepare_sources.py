"""prepare --complexfuncbench / --nestful (data/agent_sources.py) on the records cut from the real files
(tests/fixtures/data_v1: ComplexFuncBench records 0, 10, 58, 346; NESTFUL executable 14 and 84, glaive 45 and 103,
sgd 18), and once on the installed data_v1 package with the real ToolBench data when both are there."""

import importlib.util
import json
import os
import shutil

import pytest

from conftest import ROOT, SHARED
from toolgen.data import agent_sources, complexfuncbench, gold, nestful
from toolgen.data.stages import MISSING_ARGUMENTS, NO_OBSERVATION
from toolgen.prepare import SAMPLE_DIR, main, prepare
from toolgen.tokens import FINISH

FIXTURES = os.path.join(ROOT, "tests", "fixtures", "data_v1")
CAR = "<<cars&&Search_Car_Location>>"


def with_sources(**kwargs):
    """The sample with both fixture sources; every request not held out for test trains unless val_fraction says."""
    return prepare(SAMPLE_DIR, complexfuncbench=FIXTURES, nestful=FIXTURES, **{"val_fraction": 0.0, **kwargs})


def from_source(examples, name):
    return [ex for ex in examples if ex.get("source") == name]


def assistant(messages):
    return [(m["content"], m["loss"]) for m in messages if m["role"] == "assistant"]


def test_specs_are_catalog_entries_in_one_token_space():
    plain, out = prepare(SAMPLE_DIR), with_sources()
    tools = out["tool_tokens.json"]["tools"]
    assert len(out["tool_memorization.json"]) == 72 + 7 + 14 and len(tools) == 72 + 7 + 14
    assert tools[CAR]["category"] == "ComplexFuncBench" and tools[CAR]["api"] == "Search_Car_Location"
    assert "Required parameters: query (string)" in tools[CAR]["documentation"]
    assert tools["<<Movies&&Movies.FindMovies>>"]["category"] == "NESTFUL"
    assert CAR in {ex["target"] for ex in out["tool_memorization.json"]}
    # ToolBench's part does not move: its tokens, its retrieval test and its agent files are the sample's
    assert set(plain["tool_tokens.json"]["tools"]) < set(tools)
    for name in ("retrieval_test.json", "agent_test.json"):
        assert out[name] == plain[name]
    assert [ex for ex in out["agent_tuning.json"] if "source" not in ex] == plain["agent_tuning.json"]


def test_retrieval_pairs_from_training_requests_only():
    out = with_sources(test_fraction=0.5, seed=1)
    for name, source in (("complexfuncbench", complexfuncbench.read(FIXTURES)), ("nestful", nestful.read(FIXTURES))):
        train, test = gold.split(source.requests, 1, 0.5)
        assert train and test, name   # both sides hold requests at this seed
        names = out["tool_tokens.json"]["tools"]
        token = {(v["category"], v["tool"], v["api"]): t for t, v in names.items()}
        expected = [(r.text, token[k]) for r in train for k in gold.to_query(r, source.keys).relevant]
        got = [(ex["messages"][0]["content"], ex["target"]) for ex in from_source(out["retrieval_training.json"], name)]
        assert got == expected
        assert not {r.text for r in test} & {text for text, _ in got}
        counts = out["prepare_report.json"]["sources"][name]
        assert (counts["train_requests"], counts["test_requests"]) == (len(train), len(test))
        assert counts["retrieval_pairs"] == len(expected)


def test_complexfuncbench_trajectories_resolved_arguments_and_cut_responses():
    out = with_sources(test_fraction=0.0, observation_budget=120)
    source = complexfuncbench.read(FIXTURES)
    examples = from_source(out["agent_tuning.json"], "complexfuncbench")
    assert [ex["query"] for ex in examples] == [r.text for r in source.requests]
    for ex, request in zip(examples, source.requests):
        t = gold.to_trajectory(request, 120)
        observations = [m["content"] for m in ex["messages"] if m["role"] == "tool"]
        assert observations == [s.observation for s in t.steps[:-1]]         # the recorded response, cut
        for text, call in zip(observations, request.calls):
            assert len(text) <= 120 or call.used_paths                       # over only to keep what later calls read
        assert not [m for m in ex["messages"] if m["content"].startswith("Thought")]   # none recorded: none written
    first = assistant(examples[0]["messages"])
    assert first[0] == (CAR, True)
    rentals = json.loads(first[3][0])                                        # call 2's arguments, resolved
    assert rentals["pick_up_latitude"] == 32.873055 and rentals["drop_off_longitude"] == -117.215935 and first[3][1]
    # no answer text is recorded: Finish (with loss) carries the return type only, without loss
    assert first[-2:] == [(FINISH, True), ('{"return_type": "give_answer"}', False)]
    # record 58: the call with an ambiguous reference is shown with its first-element value, without loss
    third = assistant(examples[2]["messages"])
    assert json.loads(third[3][0])["pick_up_longitude"] == -75.2443 and third[3][1] is False
    counts = out["prepare_report.json"]["sources"]["complexfuncbench"]
    # by hand: 4 requests with 3 + 2 + 3 + 4 calls; one call (record 58's second) ambiguous, read twice
    assert {k: counts[k] for k in ("requests", "trajectories", "steps", "calls", "calls_with_complete_arguments",
                                   "calls_with_observation", "steps_with_thought", "finish_with_answer",
                                   "ambiguous_references", "train_calls_with_ambiguous_references")} == {
        "requests": 4, "trajectories": 4, "steps": 16, "calls": 12, "calls_with_complete_arguments": 11,
        "calls_with_observation": 12, "steps_with_thought": 0, "finish_with_answer": 0, "ambiguous_references": 2,
        "train_calls_with_ambiguous_references": 1}


def test_nestful_trajectories_keep_references_and_record_no_observation():
    out = with_sources(test_fraction=0.0)
    examples = from_source(out["agent_tuning.json"], "nestful")
    assert len(examples) == 4                                                # record 84 (malformed) dropped
    rate = assistant(examples[0]["messages"])
    assert rate[3] == ('{"numbers": "5 * $var1.Exchange Rate$"}', True)     # as written, references kept
    assert json.loads(json.loads(rate[-1][0])["final_answer"]) == {
        "exchange_rate": "$var1.Exchange Rate$", "calculated_value": "$var2.answer$"} and rate[-1][1]
    assert {m["content"] for ex in examples for m in ex["messages"] if m["role"] == "tool"} == {NO_OBSERVATION}
    definition = assistant(examples[2]["messages"])                          # glaive 103: its answer was dropped
    assert definition[-1] == ('{"return_type": "give_answer"}', False)
    counts = out["prepare_report.json"]["sources"]["nestful"]
    assert {k: counts[k] for k in ("requests", "requests_dropped", "answers_dropped", "trajectories", "calls",
                                   "calls_with_complete_arguments", "calls_with_observation", "finish_with_answer")} \
        == {"requests": 5, "requests_dropped": 1, "answers_dropped": 1, "trajectories": 4, "calls": 2 + 4 + 2 + 3,
            "calls_with_complete_arguments": 11, "calls_with_observation": 0, "finish_with_answer": 3}
    skipped = out["prepare_report.json"]["skipped"]
    assert skipped["malformed_reference"] == 1 and skipped["answer_dropped_reference_to_unknown_variable"] == 1


def test_validation_requests_are_e2e_records_and_train_nothing():
    """val_fraction of the training requests (another hash than the test split's) goes to agent_e2e_val.json, in
    the held-out record layout, and to no training file; the test split does not move."""
    plain, out = with_sources(test_fraction=0.3, seed=2), with_sources(test_fraction=0.3, seed=2, val_fraction=0.5)
    assert out["agent_e2e_test.json"] == plain["agent_e2e_test.json"]
    val = out["agent_e2e_val.json"]
    trained = {ex["query"] for ex in out["agent_tuning.json"] if "source" in ex}
    pairs = {ex["messages"][0]["content"] for ex in out["retrieval_training.json"] if "source" in ex}
    assert val and {r["request"] for r in val}.isdisjoint(trained | pairs)
    assert trained | {r["request"] for r in val} == {ex["query"] for ex in plain["agent_tuning.json"] if "source" in ex}
    assert set(val[0]) == set(out["agent_e2e_test.json"][0]) and plain["agent_e2e_val.json"] == []
    for name in ("complexfuncbench", "nestful"):
        counts = out["prepare_report.json"]["sources"][name]
        assert counts["val_requests"] == len([r for r in val if r["source"] == name])
        assert counts["train_requests"] == len(from_source(out["agent_tuning.json"], name))
    # --agent-val-fraction: the agent sources' share apart from the queries'
    apart = with_sources(test_fraction=0.3, seed=2, val_fraction=0.5, agent_val_fraction=0.0)
    assert apart["agent_e2e_val.json"] == [] and apart["retrieval_val.json"] == out["retrieval_val.json"]
    assert apart["prepare_report.json"]["agent_val_fraction"] == 0.0


def test_no_placeholder_thought_and_no_marker_with_loss_anywhere():
    out = with_sources(test_fraction=0.3)
    for ex in out["agent_tuning.json"] + out["agent_test.json"]:
        for m in ex["messages"]:
            assert m["content"] != "Thought: next step."
            assert not (m["loss"] and m["content"] in (MISSING_ARGUMENTS, NO_OBSERVATION))


def test_held_out_requests_are_e2e_records_and_separate_retrieval_records():
    out = with_sources(test_fraction=1.0)
    records = out["agent_e2e_test.json"]
    cfb = complexfuncbench.read(FIXTURES)
    assert [r["uid"] for r in records] == [r.uid for r in cfb.requests + nestful.read(FIXTURES).requests]
    assert from_source(out["agent_tuning.json"], "complexfuncbench") == []
    first = records[0]
    assert (first["source"], first["query_id"], first["request"]) == (
        "complexfuncbench", "complexfuncbench_complexfuncbench-data_0", cfb.requests[0].text)
    assert first["tools"] == [CAR, "<<cars&&Search_Car_Rentals>>"]
    call = first["calls"][1]
    assert (call["name"], call["token"], call["tool"], call["api"], call["label"]) == (
        "Search_Car_Rentals", "<<cars&&Search_Car_Rentals>>", "cars", "Search_Car_Rentals", "var2")
    assert call["arguments"]["pick_up_latitude"] == "$var1.coordinates.latitude$"
    assert call["resolved_arguments"]["pick_up_latitude"] == 32.873055
    assert call["has_response"] and call["response"] == cfb.requests[0].calls[1].response   # whole, not cut
    assert first["calls"][0]["used_paths"] == [[0, "coordinates", "latitude"], [0, "coordinates", "longitude"]]
    assert records[2]["calls"][1]["ambiguous_references"] == ["$var1.coordinates.longitude$"]
    assert (first["answer"], first["finish"]) == (None, {"return_type": "give_answer"})
    movies = records[-1]
    assert movies["source"] == "nestful" and not movies["calls"][0]["has_response"]
    assert movies["calls"][0]["response"] is None and movies["calls"][0]["resolved_arguments"] is None
    assert movies["answer"] == {"movie_times": "$var2$", "movie_tickets": "$var3$"}
    # retrieval: the sources' held-out requests in their own file, retrieval_test.json's format; not in that file
    retrieval = out["retrieval_test_agent_sources.json"]
    assert [r["query_id"] for r in retrieval] == [r["query_id"] for r in records]
    assert retrieval[0] == {"query_id": "complexfuncbench_complexfuncbench-data_0", "messages": [
        {"role": "user", "content": cfb.requests[0].text, "loss": False}], "relevant": first["tools"],
        "missing_relevant": []}
    assert not {r["query_id"] for r in out["retrieval_test.json"]} & {r["query_id"] for r in retrieval}
    assert json.loads(json.dumps(records)) == records                        # plain JSON throughout


def test_min_complete_applies_to_the_sources():
    out = with_sources(test_fraction=0.0, min_complete=0.9)    # record 58: 2 of 3 calls complete
    counts = out["prepare_report.json"]["sources"]["complexfuncbench"]
    assert counts["dropped_below_min_complete"] == 1 and counts["trajectories"] == 3
    assert len(from_source(out["retrieval_training.json"], "complexfuncbench")) == 10   # retrieval keeps it


def test_observation_order_reaches_the_agent_examples():
    """--observation-order ids-first: the agent examples show the responses cut in that order (different from the
    document's order at this budget), and the report says so, for evaluate's replay loop to follow."""
    out = with_sources(test_fraction=0.0, observation_budget=120, observation_order="ids-first")
    requests = complexfuncbench.read(FIXTURES).requests
    shown = [[m["content"] for m in ex["messages"] if m["role"] == "tool"]
             for ex in from_source(out["agent_tuning.json"], "complexfuncbench")]
    assert shown == [[s.observation for s in gold.to_trajectory(r, 120, order="ids-first").steps[:-1]] for r in requests]
    assert shown != [[s.observation for s in gold.to_trajectory(r, 120).steps[:-1]] for r in requests]
    assert out["prepare_report.json"]["observation_order"] == "ids-first"


def test_prepare_counts_training_calls_copying_ids_the_cut_hides(monkeypatch):
    """A call that copies the vehicle_id of the 9th of 10 cars in the previous response: hidden by a 400-character
    cut in the document's order (about 6 cars fit), shown ids first (the 10 ids take about 290 characters). The
    fixture's own calls copy no id (their arguments are references, places and dates)."""
    real = agent_sources.read_sources
    cars = [{"vehicle_id": str(700000000 + i), "blurb": "x" * 30} for i in range(10)]

    def read_sources(roots):
        sources = real(roots)
        prev, last = sources["complexfuncbench"].requests[-1].calls[-2:]
        prev.response, prev.used_paths = cars, []
        last.arguments = {**last.arguments, "vehicle_id": cars[8]["vehicle_id"]}
        last.resolved = {**last.resolved, "vehicle_id": cars[8]["vehicle_id"]}
        return sources
    monkeypatch.setattr(agent_sources, "read_sources", read_sources)
    for order, hidden in (("document", 1), ("ids-first", 0)):
        out = with_sources(test_fraction=0.0, observation_budget=400, observation_order=order)
        counts = out["prepare_report.json"]["sources"]
        assert counts["complexfuncbench"]["train_calls_copying_unseen_ids"] == hidden
        assert counts["nestful"]["train_calls_copying_unseen_ids"] == 0   # no responses: nothing is copied


def test_cli_flags_and_errors_name_the_flag(tmp_path, monkeypatch):
    out = tmp_path / "out"
    main(["--out", str(out), "--complexfuncbench", FIXTURES, "--nestful", FIXTURES, "--observation-budget", "500",
          "--observation-order", "ids-first"])
    with open(out / "prepare_report.json") as f:
        report = json.load(f)
    assert set(report["sources"]) == {"toolbench", "complexfuncbench", "nestful"}
    assert report["observation_budget"] == 500 and report["observation_order"] == "ids-first"
    assert report["written"]["agent_e2e_test.json"] == report["sources"]["complexfuncbench"]["test_requests"] + \
        report["sources"]["nestful"]["test_requests"]
    with pytest.raises(SystemExit, match=r"^toolgen-prepare: error: --nestful .*nowhere: not a folder"):
        main(["--out", str(out), "--nestful", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"^toolgen-prepare: error: --complexfuncbench .*complexfuncbench-spec.json: "
                                         r"not found"):
        main(["--out", str(out), "--complexfuncbench", str(tmp_path)])
    monkeypatch.setattr(gold, "installed_root", lambda: None)
    with pytest.raises(SystemExit, match=r"^toolgen-prepare: error: --complexfuncbench: the data_v1 package .* "
                                         r"not installed"):
        main(["--out", str(out), "--complexfuncbench"])


def test_a_bad_spec_is_an_error_naming_file_and_record(tmp_path):
    root = shutil.copytree(FIXTURES, tmp_path / "data_v1")
    path = os.path.join(root, "non-executable", "non-executable-sgd-spec.json")
    with open(path) as f:
        specs = json.load(f)
    del specs[1]["query_parameters"]
    with open(path, "w") as f:
        json.dump(specs, f)
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "out"), "--nestful", str(root)])
    assert e.value.code.startswith(f"toolgen-prepare: error: {path} record 1 (name ")
    assert "missing required field 'query_parameters'" in e.value.code


# ---- the real files ------------------------------------------------------------------------------------------------

@pytest.mark.skipif(importlib.util.find_spec("data_v1") is None or not os.path.isdir(SHARED),
                    reason="needs nestful-wrapper 0.1.7 (package data_v1) and the real ToolBench data")
def test_real_data_with_both_sources():
    from test_prepare import real_prepare
    out = real_prepare(complexfuncbench=True, nestful=True)
    report, sources = out["prepare_report.json"], out["prepare_report.json"]["sources"]
    cfb, nf = sources["complexfuncbench"], sources["nestful"]
    assert (cfb["apis"], cfb["requests"], cfb["requests_dropped"]) == (40, 1000, 0)
    assert cfb["train_requests"] + cfb["val_requests"] + cfb["test_requests"] == 1000
    assert 100 < cfb["test_requests"] < 300 and 40 < cfb["val_requests"] < 120   # 10 % of the rest
    assert len(out["agent_e2e_val.json"]) == cfb["val_requests"] + nf["val_requests"]
    assert cfb["ambiguous_references"] == 44
    assert sum(cfb[f"{side}_calls_with_ambiguous_references"] for side in ("train", "val", "test")) == 29
    assert cfb["trajectories"] == cfb["train_requests"] and cfb["calls_with_observation"] == cfb["calls"]
    assert cfb["calls"] - cfb["calls_with_complete_arguments"] == cfb["train_calls_with_ambiguous_references"]
    assert (nf["apis"], nf["requests"], nf["requests_dropped"], nf["answers_dropped"]) == (133, 300, 1, 2)
    assert nf["train_requests"] + nf["val_requests"] + nf["test_requests"] == 299 and nf["calls_with_observation"] == 0
    assert len(out["agent_e2e_test.json"]) == len(out["retrieval_test_agent_sources.json"]) == \
        cfb["test_requests"] + nf["test_requests"]
    assert len(out["tool_memorization.json"]) == 2490 + 40 + 133
    assert len(from_source(out["agent_tuning.json"], "complexfuncbench")) == cfb["train_requests"]
    # ToolBench: no placeholder thought, a test split of complete trajectories only
    tb = sources["toolbench"]
    assert tb["train"] == len([ex for ex in out["agent_tuning.json"] if "source" not in ex])
    assert tb["test"] == len(out["agent_test.json"]) and tb["dropped_incomplete_test"] > 0
    for ex in out["agent_test.json"]:
        messages = ex["messages"]
        assert all(messages[i + 1]["loss"] for i, m in enumerate(messages)
                   if m["role"] == "user" and m["content"].startswith("Give the input") and
                   messages[i - 1]["content"] != FINISH)
    assert not [m for ex in out["agent_tuning.json"] for m in ex["messages"] if m["content"] == "Thought: next step."]
    # responses cut to the budget, unless a later call reads more than fits
    train, _ = gold.carve_val(gold.split(complexfuncbench.read().requests, 0, 0.2)[0], 0, 0.1)
    examples = from_source(out["agent_tuning.json"], "complexfuncbench")
    assert [ex["query"] for ex in examples] == [r.text for r in train]
    for ex, request in list(zip(examples, train))[::25]:
        observations = [m["content"] for m in ex["messages"] if m["role"] == "tool"]
        assert all(len(text) <= gold.OBSERVATION_BUDGET or call.used_paths
                   for text, call in zip(observations, request.calls))
    assert report["read"]["apis"] == 2490


def test_input_doc_params_shows_types_allowed_values_and_descriptions(tmp_path):
    """--input-doc params: the arguments turn shows each parameter's type, allowed values and (cleaned, capped)
    description, in training and in tool_tokens.json alike, and the loop's tools (prepared folder or spec file) show
    the same text; the default stays the names alone."""
    from toolgen.data import stages
    from toolgen.toolset import Toolset
    api = gold.api_from_spec({"name": "Search_Hotels", "description": "Search Hotels.", "query_parameters": {
        "dest_id": {"type": "number", "description": "Can be **retrieved**  from\n`searchDestination`.", "required": True},
        "sort_by": {"type": "String", "description": "", "required": False, "enum": ["price", "distance"]},
        "note": {"type": "string", "description": "word " * 100, "required": False}}}, "x", "cfb",
        lambda spec: ("hotels", ""))
    doc = json.loads(stages.api_input_doc(api, params=True))
    assert doc["required"] == ["dest_id"] and doc["optional"] == ["sort_by", "note"]
    assert doc["parameters"]["dest_id"] == "number: Can be retrieved from `searchDestination`."
    assert doc["parameters"]["sort_by"] == "string, one of price | distance"
    note = doc["parameters"]["note"]   # "string: " + at most PARAM_TEXT characters cut at a word, then " ..."
    assert note.startswith("string: word word") and note.endswith(" ...") and len(note) <= 8 + stages.PARAM_TEXT + 4
    assert "parameters" not in json.loads(stages.api_input_doc(api))

    out = with_sources(test_fraction=0.0, input_doc="params")
    tools = out["tool_tokens.json"]
    assert tools["input_doc"] == "params" and out["prepare_report.json"]["input_doc"] == "params"
    assert tools["tools"][CAR]["input_doc"]["parameters"] == {"query": "string: Names of locations, cities, districts, "
                                                                       "places, countries, counties etc."}
    shown = [m["content"][len(stages.ASK_INPUT):] for ex in from_source(out["agent_tuning.json"], "complexfuncbench")
             for m in ex["messages"] if m["content"].startswith(stages.ASK_INPUT + '{"name": "Search_Car_Location"')]
    assert shown and set(shown) == {json.dumps(tools["tools"][CAR]["input_doc"], ensure_ascii=False)}
    (tmp_path / "tool_tokens.json").write_text(json.dumps(tools))
    spec_file = os.path.join(FIXTURES, "complexfuncbench", "complexfuncbench-spec.json")
    assert (Toolset.load(str(tmp_path)).get(CAR).input_doc == Toolset.load(spec_file, params=True).get(CAR).input_doc
            == shown[0])
    assert with_sources(test_fraction=0.0)["tool_tokens.json"]["input_doc"] == "names"
