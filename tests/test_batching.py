"""Batched end-to-end runs (toolgen/batching.py): several requests at once, their model calls batched, give the same
transcripts and metrics as one request at a time."""

import os
import types

from toolgen import models
from toolgen.batching import BatchingPolicy
from toolgen.agent import AgentConfig, run_e2e
from toolgen.data.gold import GoldCall, GoldRequest
from toolgen.toolset import Toolset


def weather_requests():
    return [GoldRequest(f"r{i}", text, [GoldCall("current weather", {"city": city}, {"city": city}, {"t": i}, True)],
                        None, "hand-made")
            for i, (text, city) in enumerate([("How warm is it in Lisbon?", "Lisbon"),
                                              ("Weather in Oslo right now, please", "Oslo"),
                                              ("Is it raining in Porto?", "Porto"),
                                              ("Current temperature in Kyoto", "Kyoto"),
                                              ("Wind in Dublin today?", "Dublin")])]


def spy_on_generations(monkeypatch):
    """Record each batched generation's size and the answers it continued."""
    from toolgen import decoding
    sizes, continued, real = [], [], decoding.generate_rows

    def spy(model, tokenizer, prompts, max_new_tokens, answered=None):
        sizes.append(len(prompts))
        continued.extend(a for a in answered or [] if a)
        return real(model, tokenizer, prompts, max_new_tokens, answered)
    monkeypatch.setattr(decoding, "generate_rows", spy)
    return sizes, continued


def test_batched_runs_equal_one_at_a_time(trained, monkeypatch):
    sizes, _ = spy_on_generations(monkeypatch)
    tokenizer, model, _ = models.load_stage(os.path.join(trained["output_dir"], "agent_tuning"))
    model.eval()
    tools = Toolset.load(os.path.join(trained["data_dir"], "tool_tokens.json"))
    requests = weather_requests()
    config = AgentConfig(max_steps=3, argument_tokens=24)
    one, m1 = run_e2e(model, tokenizer, requests, tools, config)
    many, m2 = run_e2e(model, tokenizer, requests, tools, config, width=3)
    assert [t.uid for t in many] == [r.uid for r in requests]
    for a, b in zip(one, many):
        assert [(s.token, s.answers, s.observation) for s in a.steps] == [(s.token, s.answers, s.observation)
                                                                         for s in b.steps]
        assert a.stop_reason == b.stop_reason
    assert m1 == m2
    assert max(sizes) > 1 and max(sizes) <= 3   # really batched, never wider than asked
    sizes.clear()
    every, m0 = run_e2e(model, tokenizer, requests, tools, config, width=0, desc="e2e")   # 0: all at once
    assert m0 == m1 and [t.steps for t in every] == [t.steps for t in many]
    assert sizes[0] == len(requests)
    cut, m_cut = run_e2e(model, tokenizer, requests, tools, config, width=3, time_limit=0)   # out of time at once
    assert cut == [] and (m_cut["e2e/requests"], m_cut["e2e/requests_cut"]) == (0, len(requests))


def babbling_model(trained):
    """The tiny stage with its base weights drawn again at a larger scale (seeded), the adapter off: greedy answers
    run to the token budget with varied tokens (the untrained tiny base repeats one token)."""
    import torch
    tokenizer, model, _ = models.load_stage(os.path.join(trained["output_dir"], "agent_tuning"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" not in name:
                p.normal_(0, 0.3)
    return tokenizer, model.eval()


def test_answers_in_segments_equal_whole_answers(trained, monkeypatch):
    """BatchingPolicy asks for long answers in segments (SEGMENT tokens, 5 here), each continuing the answer so far:
    the same transcripts as one request at a time with whole answers."""
    monkeypatch.setattr(BatchingPolicy, "SEGMENT", 5)
    sizes, continued = spy_on_generations(monkeypatch)
    tokenizer, model = babbling_model(trained)
    tools = Toolset.load(os.path.join(trained["data_dir"], "tool_tokens.json"))
    config = AgentConfig(max_steps=2, argument_tokens=24)
    with model.disable_adapter():
        one, m1 = run_e2e(model, tokenizer, weather_requests(), tools, config)
        many, m2 = run_e2e(model, tokenizer, weather_requests(), tools, config, width=0)
    assert [[(s.token, s.answers) for s in t.steps] for t in one] == [[(s.token, s.answers) for s in t.steps]
                                                                       for t in many]
    assert m1 == m2 and max(sizes) > 1
    assert len(continued) > len(sizes) / 2 and max(len(a) for a in continued) >= 15   # 4th segments, and more


def test_a_generation_continues_an_answer_as_one_generation_would(trained):
    """decoding.generate_rows with `answered`: the continuation of the first k tokens is the rest of the whole
    greedy answer, in a batch of rows continued from different points; a row cut by max_new_tokens is not done."""
    from toolgen import decoding
    tokenizer, model = babbling_model(trained)
    prompts = [[{"role": "user", "content": q}] for q in ("How warm is it in Lisbon?", "Wind in Dublin today?")]
    with model.disable_adapter():
        whole = decoding.generate_rows(model, tokenizer, prompts, 20)
        cut = [3, 11]
        rest = decoding.generate_rows(model, tokenizer, prompts, 20 - max(cut),
                                      [ids[:k] for (ids, _), k in zip(whole, cut)])
    assert len(set(whole[0][0])) > 5 and [done for _, done in whole + rest] == [False] * 4
    for (ids, _), (more, _), k in zip(whole, rest, cut):
        assert more == ids[k:k + 20 - max(cut)]


def test_generation_stops_each_row_once_its_json_object_is_complete():
    """The arguments turn ends at the object's closing brace (strings and escapes respected), row by row: a model
    that does not end its turn there no longer runs on to the 512-token argument budget; a thought never stops early."""
    import torch

    from toolgen.decoding import JsonObjectDone, json_object_done
    cases = {'{"city": "Oslo"}': True, ' {"a": [1, {"b": 2}]} and more': True, "{}": True,
             '{"a": "}"': False, '{"a": "x\\"}"': False, '{"a": "x\\"}"}': True, '{"a": {"b": 1}': False,
             "Thought: call {it}": False, "": False}
    assert {t: json_object_done(t) for t in cases} == cases
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model("tiny"))
    prompt = tokenizer("Give the input.")["input_ids"]
    for text, done in (('{"city": "Oslo"}', True), ('{"city": "Os', False)):
        ids = torch.tensor([prompt + tokenizer(text, add_special_tokens=False)["input_ids"]] * 2)
        assert JsonObjectDone(tokenizer, len(prompt))(ids, None).tolist() == [done, done]
    # a generation that continues an answer begun in an earlier segment judges the whole answer
    rest = tokenizer('lo"}', add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + rest] * 2)
    assert JsonObjectDone(tokenizer, len(prompt), ['{"city": "Os', ""])(ids, None).tolist() == [True, False]


def test_generation_stops_a_row_that_loops():
    """RepeatingRow: a row whose last 64 new tokens repeat one block of <= 16 tokens stops (it would hold the whole
    batch to the token budget); a row that is not a loop, or a loop shorter than the window, goes on; row by row."""
    import torch

    from toolgen.decoding import RepeatingRow
    prompt = [7, 8, 9]
    loop = [1, 2] + [11, 12, 13] * 23                            # 71 new tokens ending in a 3-token loop
    varied = list(range(100, 171))                                # 71 new tokens, no period
    short = list(range(1, 12)) + [11, 12] * 30                    # the loop covers 60 < 64 tokens
    rows = torch.tensor([prompt + r for r in (loop, varied, short)])
    assert RepeatingRow(prompt_length=3)(rows, None).tolist() == [True, False, False]
    assert not RepeatingRow(prompt_length=3)(torch.tensor([prompt + [11] * 40]), None).item()   # too few new tokens
    assert RepeatingRow(prompt_length=3)(torch.tensor([prompt + [11] * 65]), None).item()
    # continuing answers: the loop row's first 40 answer tokens came in an earlier segment (now part of the prompt)
    stop = RepeatingRow(prompt_length=3 + 40, answered=[40, 40, 40])
    assert stop(rows, None).tolist() == [True, False, False] and stop.fired.tolist() == [True, False, False]
    assert RepeatingRow(prompt_length=3 + 40, answered=[0, 0, 0])(rows, None).tolist() == [False] * 3   # 31 < 65


def test_json_stop_fed_token_by_token_equals_the_whole_text():
    """JsonObjectDone decodes only the new tokens at each step: at every step of a generation its verdict per row
    equals json_object_done on the row's whole decoded text (escapes, nesting, multi-byte characters cut across
    tokens, text that never starts with a brace)."""
    import random

    import torch
    from transformers import AutoTokenizer

    from toolgen.decoding import JsonObjectDone, json_object_done
    tokenizer = AutoTokenizer.from_pretrained(models.resolve_model("tiny"))
    rng = random.Random(0)
    pieces = ['{', '}', '[', ']', '"', '\\\\', '\\"', ' ', 'a', 'key', ': ', ', ', 'é', '日本', '\n']
    texts = ['{"a": "x\\\\"}"}', ' {"k": [1, {"b": "}"}]} tail', 'Thought: {x}']
    texts += [rng.choice(['{', ' {', 'x']) + "".join(rng.choice(pieces) for _ in range(40)) for _ in range(30)]
    prompt = tokenizer("Give the input.")["input_ids"]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.tensor([prompt + r + [pad] * (width - len(r)) for r in rows])   # finished rows run on as padding
    stop = JsonObjectDone(tokenizer, len(prompt))
    for n in range(1, width + 1):
        got = stop(ids[:, :len(prompt) + n], None).tolist()
        whole = [json_object_done(tokenizer.decode(r[:n], skip_special_tokens=True)) for r in rows]
        assert got == whole, n
    assert any(whole) and not all(whole)


def test_json_stop_benchmark_runs_on_the_tiny_tokenizer():
    """benchmarks/json_stop.py (the numbers in benchmarks/results/json_stop.md), smoke-run: one table row per shape."""
    import subprocess
    import sys

    from conftest import ROOT
    out = subprocess.run([sys.executable, "benchmarks/json_stop.py", "--tokenizer", "tiny", "--rows", "2", "3",
                          "--tokens", "8", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True, check=True)
    rows = [line.split("|")[1:3] for line in out.stdout.splitlines() if line.startswith("| ") and "rows" not in line]
    assert [[c.strip() for c in r] for r in rows] == [["2", "8"], ["3", "8"]]


class RecordingPolicy(BatchingPolicy):
    """Records the size of each batch instead of running a model."""

    def __init__(self, wait_s):
        self.sizes = []   # before the worker thread starts
        tokenizer = types.SimpleNamespace(decode=lambda ids, skip_special_tokens: "{}")
        super().__init__(types.SimpleNamespace(prompt=lambda messages: [1], tokenizer=tokenizer), wait_s)

    def _run(self, batch):
        self.sizes.append(len(batch))
        for slot in batch:
            slot["result"] = ([2], True)   # a whole answer: one segment


def ask_after(policy, delays):
    """One thread per live loop: each asks for a generation after its own delay (its CPU work before the call)."""
    import threading
    import time
    for _ in delays:
        policy.enter()

    def loop(delay):
        time.sleep(delay)
        policy.generate([], 4)
        policy.leave()
    threads = [threading.Thread(target=loop, args=(d,)) for d in delays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    policy.close()
    return policy.sizes


def test_loops_that_arrive_one_after_the_other_share_one_batch():
    # 20 loops 30 ms apart (0.6 s in all): each gap is shorter than wait_s, so one batch; a fixed wait from the first
    # arrival (the earlier rule) split them into a batch per few loops
    assert ask_after(RecordingPolicy(wait_s=0.2), [0.03 * i for i in range(20)]) == [20]


def test_a_loop_that_stops_arriving_holds_the_others_for_wait_s_only():
    import time
    start = time.monotonic()
    sizes = ask_after(RecordingPolicy(wait_s=0.2), [0.0, 0.01, 0.02, 1.5])   # the last one is busy (a slow tool)
    assert sizes == [3, 1]
    assert time.monotonic() - start < 1.5 + 0.5


def test_the_first_wave_of_runs_asks_in_one_batch():
    """run_batched registers the first `width` runs before any thread starts: the first loop to ask does not find
    itself alone (a batch of one, then the others out of step)."""
    from toolgen.batching import run_batched
    policy = RecordingPolicy(wait_s=0.2)

    class Run:
        def run(self, *job, stop=None):
            for _ in range(3):
                policy.generate([], 4)
            return job[0]
    out = run_batched(Run, [(f"r{i}",) for i in range(12)], policy, width=8)
    assert out == [f"r{i}" for i in range(12)]
    assert policy.sizes[0] == 8 and sum(policy.sizes) == 36


def test_agent_loop_cpu_benchmark_runs_the_real_loop_with_an_instant_model(trained, tmp_path, capsys):
    """benchmarks/agent_loop_cpu.py: all requests of a source at once through run_e2e, batches that cost nothing;
    its table counts the requests and the batches."""
    import json
    import shutil
    import sys

    from conftest import ROOT, weather_call
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import agent_loop_cpu
    data = tmp_path / "data"
    shutil.copytree(trained["data_dir"], data)
    records = [{"source": "weather", "uid": f"w{i}", "query_id": f"w{i}", "request": f"Weather {i}?", "tools": [],
                "calls": [weather_call("Oslo", 1)], "answer": None, "finish": {}, "origin": "hand-made"}
               for i in range(3)]
    (data / "agent_e2e_test.json").write_text(json.dumps(records))
    agent_loop_cpu.main(["--data", str(data), "--tokenizer", os.path.join(trained["output_dir"], "agent_tuning",
                                                                           "tokenizer"),
                         "--source", "weather", "--max-steps", "3", "--repeats", "1"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 3 |")]
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    assert 3 <= int(cells[1]) <= 9 and int(cells[4]) >= 2   # 1-3 steps per request; at least two batches
