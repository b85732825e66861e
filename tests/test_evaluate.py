"""Metrics against hand-computed values, constrained decoding, the baselines, and the evaluation command."""

import json
import math
import os
import shutil

import pytest
import torch

from conftest import weather_call

from toolgen import baselines, decoding, metrics, models, retrieval
from toolgen.agent_metrics import agent_metrics, arguments_correct
from toolgen.evaluate import main as evaluate_main

L2, L3, L6 = math.log2(2), math.log2(3), math.log2(6)


def test_ndcg_mrr_recall_by_hand():
    ranked, relevant = ["a", "b", "c", "d", "e"], {"b", "e", "z"}    # z: relevant but never retrievable
    ideal3 = 1 + 1 / L3 + 1 / math.log2(4)
    assert metrics.ndcg(ranked, relevant, 1) == 0.0
    assert metrics.ndcg(ranked, relevant, 3) == pytest.approx((1 / L3) / ideal3)            # 0.2961
    assert metrics.ndcg(ranked, relevant, 5) == pytest.approx((1 / L3 + 1 / L6) / ideal3)   # 0.4776
    assert metrics.ndcg_retrieved_only(ranked, relevant, 3) == pytest.approx(1 / L3)       # inflated: 0.6309
    assert metrics.ndcg_retrieved_only(ranked, relevant, 5) == pytest.approx((1 / L3 + 1 / L6) / (1 + 1 / L3))
    assert metrics.reciprocal_rank(ranked, relevant) == 0.5
    assert metrics.recall(ranked, relevant, 5) == pytest.approx(2 / 3)
    assert metrics.ndcg(["b"], {"b"}, 5) == 1.0 and metrics.reciprocal_rank(["x"], {"b"}) == 0.0
    m = metrics.retrieval_metrics([ranked, ["b", "a"]], [relevant, {"b"}])
    assert m["mrr"] == pytest.approx(0.75) and m["ndcg@1"] == pytest.approx(0.5) and m["queries"] == 2


def test_ties_and_classification_by_hand():
    assert decoding.rank_tools(torch.tensor([[0.0, 5.0, 5.0, 1.0]]), [3, 2, 1]) == [[2, 1, 3]]
    assert metrics.accuracy(["a", "b"], ["a", "c"]) == 0.5
    assert metrics.macro_f1(["a", "a", "b", "c"], ["a", "b", "b", "c"]) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)


def test_argument_check():
    doc = {"required": ["city"]}
    assert arguments_correct('{"city": " lisbon"}', '{"city": "Lisbon"}', doc)
    assert not arguments_correct('{"town": "Lisbon"}', '{"city": "Lisbon"}', doc)
    assert not arguments_correct('{"city": "Porto"}', '{"city": "Lisbon"}', doc)
    assert not arguments_correct("city = Lisbon", '{"city": "Lisbon"}', doc)


@pytest.fixture(scope="module")
def untrained(sample_data):
    from toolgen.config import ModelConfig
    tools = json.load(open(os.path.join(sample_data, "tool_tokens.json")))
    tokenizer, model, ids = models.load_base(ModelConfig(name="tiny", dtype="float32"), tools["tokens"])
    return tokenizer, model.eval(), ids, tools


def test_step_tool_choice_follows_the_tool_scorer(trained):
    """With a tool_scorer (the +prior row's re-ranking) the step-wise tool choice is the scorer's: one that always
    names tool X gives, by hand, the share of steps whose reference is X, and in any order the share of steps with X
    still to come. The scorer reads the user's request and gets one score per action token."""
    d, data = trained["output_dir"], trained["data_dir"]
    tokenizer, model, _ = models.load_stage(os.path.join(d, "agent_tuning"))
    tools = [t for t in json.load(open(os.path.join(data, "tool_tokens.json")))["tokens"] if t != "<<Finish>>"]
    actions = tools + ["<<Finish>>"]
    trajectories = json.load(open(os.path.join(data, "agent_test.json")))
    references = [[m["content"] for m in t["messages"] if m["role"] == "assistant" and m["content"] in tools]
                  for t in trajectories]
    x, requests = references[0][0], []

    def always_x(request, thought, candidates, logprobs):
        requests.append(request)
        assert candidates == actions and tuple(logprobs.shape) == (len(actions),)
        return torch.tensor([float(c == x) for c in candidates])

    m, _ = agent_metrics(model.eval(), tokenizer, actions, trajectories, always_x)
    steps = [r for ref in references for r in ref]
    assert m["agent/action_steps"] == len(steps)
    assert m["agent/tool_selection_accuracy"] == pytest.approx(sum(r == x for r in steps) / len(steps))
    ahead = [x in ref[k:] for ref in references for k in range(len(ref))]
    assert m["agent/tool_selection_accuracy_any_order"] == pytest.approx(sum(ahead) / len(ahead))
    assert requests[0] == trajectories[0]["query"] and "agent/argument_accuracy" not in m


def test_constrained_decoding_only_emits_real_tools_on_a_random_model(untrained, sample_data):
    tokenizer, model, ids, _ = untrained
    queries = [[{"role": "user", "content": r["messages"][0]["content"]}]
               for r in json.load(open(os.path.join(sample_data, "retrieval_test.json")))]
    logprobs = decoding.next_token_logprobs(model, tokenizer, queries, batch_size=7)
    assert logprobs.shape == (len(queries), len(tokenizer))          # padding rows are cut
    ranked = decoding.rank_tools(logprobs, ids, 5)
    assert all(i in set(ids) for row in ranked for i in row)
    unconstrained = logprobs.argmax(-1).tolist()
    assert any(i not in set(ids) for i in unconstrained)              # the mask is what keeps them real


def test_ranking_equals_constrained_beam_search(untrained):
    tokenizer, model, ids, _ = untrained
    messages = [{"role": "user", "content": "What is the weather like right now in Lisbon?"}]
    ranked = decoding.rank_tools(decoding.next_token_logprobs(model, tokenizer, [messages]), ids, 4)[0]
    assert decoding.beam_search_tools(model, tokenizer, messages, ids, 4) == ranked


def test_bm25_and_dense_find_the_obvious_document():
    docs = {"weather": "current weather temperature wind forecast for a city",
            "stocks": "stock quote price of a ticker symbol on the exchange",
            "recipes": "recipes that use ingredients for cooking dinner"}
    queries = ["what's the temperature and wind in Oslo", "price of the AAPL ticker", "cooking with eggs ingredients"]
    assert [r[0] for r in baselines.bm25_rank(docs, queries, 3)] == ["weather", "stocks", "recipes"]
    assert [r[0] for r in baselines.dense_rank(docs, queries, 3)] == ["weather", "stocks", "recipes"]


def test_evaluate_command_writes_all_systems(trained, tmp_path, capsys):
    out = tmp_path / "eval"
    d, data = trained["output_dir"], trained["data_dir"]
    evaluate_main(["--model", os.path.join(d, "retrieval_training"), "--model", os.path.join(d, "agent_tuning"),
                   "--data", data, "--out", str(out), "--runs", os.path.join(d, "runs")])
    report = json.load(open(out / "metrics.json"))
    systems = report["systems"]
    assert set(systems) == {"bm25", "minilm", "base", "toolgen/retrieval_training", "toolgen/agent_tuning",
                            "toolgen/retrieval_training+prior", "toolgen/agent_tuning+prior"}
    # The numbers are the metrics of the rankings, recomputed here from the pieces: BM25 over the documentation,
    # the agent stage's constrained ranking, its memorization top-1.
    tools = json.load(open(os.path.join(data, "tool_tokens.json")))
    test = json.load(open(os.path.join(data, "retrieval_test.json")))
    relevant = [set(r["relevant"]) | set(r["missing_relevant"]) for r in test]
    queries = [r["messages"][-1]["content"] for r in test]
    views = report["choices"]["doc_views"]   # each retriever's documentation view, chosen on retrieval_val.json
    assert systems["bm25"]["doc_view"] == views["bm25"] and report["choices"]["validation_queries"] > 0
    docs = {t: v["documentation"] for t, v in tools["tools"].items()}
    bm25 = baselines.bm25_rank({t: baselines.doc_text(d, views["bm25"]) for t, d in docs.items()}, queries, 100)
    expected = metrics.retrieval_metrics(bm25, relevant)
    for key in ("ndcg@1", "ndcg@5", "mrr", "recall@5"):
        assert systems["bm25"][f"retrieval/{key}"] == pytest.approx(expected[key])
    tokenizer, model, _ = models.load_stage(os.path.join(d, "agent_tuning"))
    candidates = [t for t in tools["tokens"] if t != "<<Finish>>"]
    ids = tokenizer.convert_tokens_to_ids(candidates)
    ranked = decoding.rank_tools(decoding.next_token_logprobs(model.eval(), tokenizer, [[{"role": "user", "content": q}]
                                                                                          for q in queries]), ids, 100)
    by_id = dict(zip(ids, candidates))
    expected = metrics.retrieval_metrics([[by_id[i] for i in r] for r in ranked], relevant)
    agent = systems["toolgen/agent_tuning"]
    for key in ("ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5"):
        assert agent[f"retrieval/{key}"] == pytest.approx(expected[key])
    # the hybrid row: the same model scores fused with the BM25 + MiniLM prior, as the report says it chose
    choice = systems["toolgen/agent_tuning+prior"]["prior/choice"]
    assert choice["tuned_on"].startswith("retrieval_val.json")   # chosen on validation, never on test
    logprobs = decoding.next_token_logprobs(model, tokenizer, [[{"role": "user", "content": q}] for q in queries])
    prior = retrieval.Prior("bm25+dense", docs, candidates, views)
    fused = retrieval.rank(retrieval.fuse(logprobs[:, ids], prior.scores(queries), retrieval.Fusion(**choice["fusion"])),
                           candidates, 100)
    expected = metrics.retrieval_metrics(fused, relevant)
    for key in ("ndcg@1", "ndcg@5", "mrr"):
        assert systems["toolgen/agent_tuning+prior"][f"retrieval/{key}"] == pytest.approx(expected[key])
    if choice["fusion"]["prior"] != "none":   # then the step-wise tool choice is also made with the prior
        assert systems["toolgen/agent_tuning+prior"]["agent/action_steps"] == systems["toolgen/agent_tuning"][
            "agent/action_steps"]
    memo = json.load(open(os.path.join(data, "tool_memorization.json")))
    top = decoding.rank_tools(decoding.next_token_logprobs(model, tokenizer, [ex["messages"][:-1] for ex in memo]), ids, 1)
    assert agent["memorization/accuracy"] == pytest.approx(
        metrics.accuracy([by_id[r[0]] for r in top], [ex["target"] for ex in memo]))
    assert agent["invalid_tool_rate"] == 0.0 and agent["agent/action_steps"] > 0
    assert agent["agent/trajectories"] == len(json.load(open(os.path.join(data, "agent_test.json"))))
    md = open(out / "metrics.md").read()
    assert "toolgen/agent_tuning" in md and "bm25" in md and "not measured" in md.lower()
    assert os.path.getsize(out / "ndcg_at_k.png") > 0 and os.path.getsize(out / "training_loss.png") > 0


def test_evaluate_refuses_bad_input_before_loading_anything(trained, tmp_path, capsys, monkeypatch):
    def no_baselines(*a, **k):
        raise AssertionError("the baselines must not load before the input is checked")
    from toolgen import evaluate
    monkeypatch.setattr(evaluate, "baseline_systems", no_baselines)
    d, data = trained["output_dir"], trained["data_dir"]
    with pytest.raises(SystemExit, match=r"--model .*no_such_stage: not a finished stage folder \(stage.json"):
        evaluate_main(["--model", str(tmp_path / "no_such_stage"), "--data", data, "--out", str(tmp_path / "e")])
    bad = tmp_path / "queries.json"
    bad.write_text(json.dumps([{"query": "fine", "relevant APIs": []}, {"relevant APIs": []}]))
    with pytest.raises(SystemExit, match=r"queries.json record 1: needs a 'query' text"):
        evaluate_main(["--model", os.path.join(d, "agent_tuning"), "--data", data, "--out", str(tmp_path / "e"),
                       "--queries", str(bad)])
    assert not os.path.exists(tmp_path / "e")


def test_evaluate_runs_the_agent_end_to_end_on_held_out_requests(trained, tmp_path):
    """agent_e2e_test.json -> the loop with the replay executor, for the agent stage and for the base told its tools:
    the metrics per source, the transcripts beside them; the numbers are the transcripts' (recomputed here)."""
    from toolgen.agent_metrics import e2e_metrics
    from toolgen.data.agent_sources import e2e_requests
    from toolgen.transcript import Transcript
    data = tmp_path / "data"
    shutil.copytree(trained["data_dir"], data)

    records = [{"source": "weather", "uid": f"w{i}", "query_id": f"weather_w{i}", "request": text, "tools": [],
                "calls": [weather_call(city, 20 + i)],
                "answer": None, "finish": {"return_type": "give_answer"}, "origin": "hand-made"}
               for i, (text, city) in enumerate([("How warm is it in Lisbon now?", "Lisbon"),
                                                 ("Is it windy in Oslo right now?", "Oslo")])]
    (data / "agent_e2e_test.json").write_text(json.dumps(records))
    out = tmp_path / "eval"
    evaluate_main(["--model", os.path.join(trained["output_dir"], "agent_tuning"), "--data", str(data),
                   "--out", str(out), "--no-baselines", "--set", "retrieval.prior=none"])
    systems = json.load(open(out / "metrics.json"))["systems"]
    for name in ("base", "toolgen/agent_tuning"):
        path = out / "transcripts" / f"{name.replace('/', '_')}_weather.json"
        transcripts = [Transcript.from_dict(t) for t in json.load(open(path))]
        assert len(transcripts) == 2
        assert transcripts[0].settings["max_steps"] == 14   # room for the longest gold sequences, not the CLI's 8
        expected = e2e_metrics(transcripts, e2e_requests(records)["weather"])
        for key in ("success_rate", "call_accuracy", "tool_selection_accuracy", "invalid_json_rate", "avg_steps"):
            assert systems[name][f"agent_e2e/weather/{key}"] == pytest.approx(expected[f"e2e/{key}"])
    # the base was told its tools (this source's only) in the system turn; the trained model was not
    assert "The tools you can use:" in transcripts[0].messages[0]["content"] or name != "base"
    base = [Transcript.from_dict(t) for t in json.load(open(out / "transcripts" / "base_weather.json"))]
    assert "<<SkyCast&&current weather>>" in base[0].messages[0]["content"]
    assert "The tools you can use:" not in transcripts[0].messages[0]["content"]

    # --e2e-only: the same loop runs and numbers, without the ranking / memorization / step-wise metrics
    evaluate_main(["--model", os.path.join(trained["output_dir"], "agent_tuning"), "--data", str(data),
                   "--out", str(tmp_path / "e2e_only"), "--e2e-only"])
    only = json.load(open(tmp_path / "e2e_only" / "metrics.json"))["systems"]
    assert set(only) == {"base", "toolgen/agent_tuning"}
    settings = json.load(open(tmp_path / "e2e_only" / "transcripts" / "toolgen_agent_tuning_weather.json"))[0]["settings"]
    assert settings["context_budget"] == 4096   # no flag: 4096, the stage's max_length being smaller
    for name, m in only.items():
        assert m and all(k.startswith("agent_e2e/") for k in m)
        assert m == {k: v for k, v in systems[name].items() if k.startswith("agent_e2e/")}

    # --e2e-source: one source only (a process per source); an unknown one stops before any model loads
    both = records + [{**r, "source": "other", "uid": "o" + r["uid"]} for r in records]
    (data / "agent_e2e_test.json").write_text(json.dumps(both))
    args = ["--model", os.path.join(trained["output_dir"], "agent_tuning"), "--data", str(data), "--e2e-only",
            "--no-base"]
    evaluate_main(args + ["--out", str(tmp_path / "one"), "--e2e-source", "other", "--e2e-block-repeats",
                          "--e2e-context-budget", "8192"])
    one = json.load(open(tmp_path / "one" / "metrics.json"))["systems"]["toolgen/agent_tuning"]
    settings = json.load(open(tmp_path / "one" / "transcripts" / "toolgen_agent_tuning_other.json"))[0]["settings"]
    assert settings["block_repeats"] is True and settings["context_budget"] == 8192   # the loop's settings reached the runs
    # the replay loop shows as much of a response as the agent stage was trained on (prepare --observation-budget),
    # unless told otherwise
    assert settings["observation_chars"] == 2000   # the sample was prepared with the default
    report = json.loads((data / "prepare_report.json").read_text())
    assert settings["observation_order"] == "document"
    (data / "prepare_report.json").write_text(json.dumps({**report, "observation_budget": 123,
                                                          "observation_order": "ids-first"}))
    for flags, chars in (([], 123), (["--e2e-observation-chars", "50"], 50)):
        out = tmp_path / f"chars{chars}"
        evaluate_main(args + ["--out", str(out), "--e2e-source", "other", "--e2e-limit", "1"] + flags)
        settings = json.load(open(out / "transcripts" / "toolgen_agent_tuning_other.json"))[0]["settings"]
        assert settings["observation_chars"] == chars and settings["observation_order"] == "ids-first"
    assert {k.split("/")[1] for k in one} == {"other"}
    assert one["agent_e2e/other/requests"] == 2
    with pytest.raises(SystemExit, match="--e2e-source nope: .* has no such source \\(it has other, weather\\)"):
        evaluate_main(args + ["--out", str(tmp_path / "none"), "--e2e-source", "nope"])
    with pytest.raises(SystemExit, match="--e2e-source: no end-to-end requests"):
        evaluate_main(args[:4] + ["--no-e2e", "--out", str(tmp_path / "none"), "--e2e-source", "other"])


def test_e2e_shards_merge_into_the_whole_run(trained, tmp_path, capsys):
    """--e2e-shard K/N runs every N-th held-out request from the K-th on; toolgen.e2e_merge scores the shards'
    folders together: the same metrics as one process on all requests (one at a time: no batching differences), the
    transcripts in request order. A missing or doubled shard stops the merge with the reason."""
    from toolgen import e2e_merge
    data = tmp_path / "data"
    shutil.copytree(trained["data_dir"], data)
    records = [{"source": "weather", "uid": f"w{i}", "query_id": f"weather_w{i}", "request": f"How warm is {city}?",
                "tools": [], "calls": [weather_call(city, 20 + i)], "answer": None,
                "finish": {"return_type": "give_answer"}, "origin": "hand-made"}
               for i, city in enumerate(["Lisbon", "Oslo", "Rome"])]
    (data / "agent_e2e_test.json").write_text(json.dumps(records))
    args = ["--model", os.path.join(trained["output_dir"], "agent_tuning"), "--data", str(data), "--e2e-only",
            "--no-base", "--e2e-width", "1"]
    evaluate_main(args + ["--out", str(tmp_path / "whole")])
    for k in (0, 1):
        evaluate_main(args + ["--out", str(tmp_path / f"shard{k}"), "--e2e-shard", f"{k}/2"])
    uids = lambda folder: [t["uid"] for t in json.load(  # noqa: E731
        open(tmp_path / folder / "transcripts" / "toolgen_agent_tuning_weather.json"))]
    assert uids("shard0") == ["w0", "w2"] and uids("shard1") == ["w1"]
    merge = ["--data", str(data), "--out", str(tmp_path / "merged")]
    e2e_merge.main(merge + [str(tmp_path / "shard1"), str(tmp_path / "shard0")])
    merged = json.load(open(tmp_path / "merged" / "metrics.json"))["systems"]["toolgen/agent_tuning"]
    whole = json.load(open(tmp_path / "whole" / "metrics.json"))["systems"]["toolgen/agent_tuning"]
    assert merged.pop("agent_e2e/weather/shards") == 2
    assert merged == pytest.approx(whole) and merged["agent_e2e/weather/requests"] == 3
    assert uids("merged") == ["w0", "w1", "w2"]
    # the validation split (agent_e2e_val.json): the same requests give the same numbers under agent_e2e_val/, the
    # transcripts apart (*_val.json), and the shards merge the same way
    (data / "agent_e2e_val.json").write_text(json.dumps(records))
    for k in (0, 1):
        evaluate_main(args + ["--out", str(tmp_path / f"val{k}"), "--e2e-shard", f"{k}/2", "--e2e-split", "val"])
    assert (tmp_path / "val0" / "transcripts" / "toolgen_agent_tuning_weather_val.json").exists()
    e2e_merge.main(["--data", str(data), "--out", str(tmp_path / "val_merged"), "--e2e-split", "val",
                    str(tmp_path / "val0"), str(tmp_path / "val1")])
    val = json.load(open(tmp_path / "val_merged" / "metrics.json"))["systems"]["toolgen/agent_tuning"]
    assert val == pytest.approx({k.replace("agent_e2e/", "agent_e2e_val/"): v for k, v in
                                 {**whole, "agent_e2e/weather/shards": 2}.items()})
    with pytest.raises(SystemExit, match="the shards cover 2 of its 3 held-out requests"):
        e2e_merge.main(merge + [str(tmp_path / "shard0")])
    with pytest.raises(SystemExit, match="the shards cover 4 of its 3 held-out requests"):
        e2e_merge.main(merge + [str(tmp_path / "shard1"), str(tmp_path / "shard1"), str(tmp_path / "shard0")])
    for folder in ("a", "b"):   # two shards with the same request (counts that happen to add up)
        (tmp_path / folder / "transcripts").mkdir(parents=True)
        (tmp_path / folder / "metrics.json").write_text(json.dumps({"systems": {"s": {}}}))
        (tmp_path / folder / "transcripts" / "s_weather.json").write_text(json.dumps([{"uid": "w0"}]))
    with pytest.raises(e2e_merge.MergeError, match="request 'w0' is also in"):
        e2e_merge.shard_transcripts(e2e_merge.shard_systems([str(tmp_path / "a"), str(tmp_path / "b")]), ["weather"])
    with pytest.raises(SystemExit):
        evaluate_main(args + ["--out", str(tmp_path / "bad"), "--e2e-shard", "2/2"])
    assert "expected K/N with 0 <= K < N" in capsys.readouterr().err
