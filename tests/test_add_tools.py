"""toolgen-add-tools on the tiny model: the shipped sample's tools split in three, a retrieval stage trained on the
first part, the two others added one after the other. Old token ids and rows are kept, the new tokens are predicted
from their documentation, evaluate runs on the result; collisions, a folder that is no stage and an empty catalog stop
the command before any work."""

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, TINY, run_stage
from toolgen import add_tools, decoding, models
from toolgen.add_tools_data import AddToolsError, name_new_tools, tool_tokens_json
from toolgen.config import load_config
from toolgen.data import SAMPLE_DIR
from toolgen.data.toolbench import Api
from toolgen.prepare import prepare, write_atomically
from toolgen.tokens import FINISH

QUERIES = [os.path.join(SAMPLE_DIR, "instruction", f) for f in ("G1_query.json", "G2_query.json")]
# One short stage that makes a 64-wide random model learn 12-13 new tokens: a high rate, many passes, little replay.
FAST = ["stages.add_tools.learning_rate=5e-3", "stages.add_tools.epochs=40", "add_tools.replay_fraction=0.25",
        "add_tools.memorization_repeats=6",
        "add_tools.views=name,multi_tool"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The 2 test cores are shared: two threads per process oversubscribe them (a tiny step then takes seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_catalog(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(line) + "\n" for line in lines)
    return str(path)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A retrieval stage trained on the sample without two batches of tools (every 6th tool from the 1st, the 4th)."""
    root = tmp_path_factory.mktemp("add_tools")
    with open(os.path.join(SAMPLE_DIR, "catalog.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    tools = sorted({line["tool_name"] for line in lines})
    batch_a, batch_b = set(tools[::6]), set(tools[3::6])
    catalogs = {name: write_catalog(root / f"{name}.jsonl", [line for line in lines if keep(line["tool_name"])])
                for name, keep in (("old", lambda t: t not in batch_a | batch_b), ("a", batch_a.__contains__),
                                   ("b", batch_b.__contains__))}
    data = str(root / "data")
    write_atomically(prepare(api_catalog=catalogs["old"], queries=QUERIES,
                             trajectories=[os.path.join(SAMPLE_DIR, "answer")]), data)
    for stage in ("memorization", "retrieval"):
        run_stage(stage, root / "out", data, f"stages.{stage}.max_steps=4")
    return {"root": root, "dir": str(root / "out" / "retrieval_training"), "data": data, **catalogs,
            "lines": lines}


def add(*argv):
    from accelerate.state import AcceleratorState, GradientState
    try:
        return add_tools.main([str(a) for a in argv])
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def error_of(*argv):
    with pytest.raises(SystemExit) as e:
        add(*argv)
    return str(e.value.code)


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def memorization_ranks(stage_dir, data_dir, tokens):
    """The rank (0 = top-1) of each tool's own token among all tools, from its documentation, constrained as evaluate
    does."""
    tokenizer, model, _ = models.load_stage(stage_dir)
    candidates = [t for t in read(os.path.join(data_dir, "tool_tokens.json"))["tokens"] if t != FINISH]
    examples = [ex for ex in read(os.path.join(data_dir, "tool_memorization.json"))
                if ex["messages"][-1]["content"] in tokens]
    scores = decoding.next_token_logprobs(model.eval(), tokenizer, [ex["messages"][:-1] for ex in examples])
    scores = scores[:, tokenizer.convert_tokens_to_ids(candidates)]
    gold = torch.tensor([candidates.index(ex["messages"][-1]["content"]) for ex in examples])
    return (scores > scores[torch.arange(len(gold)), gold][:, None]).sum(1)


@pytest.mark.parametrize("tied", [True, False])
def test_continued_adapter_keeps_every_old_id_and_row(parent, tmp_path, tied):
    parent_dir = parent["dir"]
    if not tied:   # an untied head has its own trainable tool rows: a short stage 1 of that model
        run_stage("memorization", tmp_path, parent["data"], "stages.memorization.max_steps=2",
                  "model.tie_word_embeddings=false")
        parent_dir = str(tmp_path / "tool_memorization")
    out = tmp_path / "added"
    add("--model", parent_dir, "--api-catalog", parent["a"], "--out", out, "--prepare-only")
    tokens = read(f"{out}.data/tool_tokens.json")["tokens"]
    old = read(os.path.join(parent_dir, "tool_tokens.json"))
    assert tokens[:len(old)] == old and len(tokens) > len(old)   # the parent's tokens first, in order
    # the model as train.py builds it for the stage, before any update
    model_cfg = load_config(TINY, [f"model.tie_word_embeddings={str(tied).lower()}"]).model
    tokenizer, base, tool_ids = models.load_base(model_cfg, tokens)
    new_ids = torch.tensor(tool_ids[len(old):])
    init = base.get_input_embeddings().weight[new_ids].detach().clone()   # the mean of their words (tokens.py)
    assert models.is_tied(base) == tied
    model = models.extend_adapter(base, os.path.join(parent_dir, "adapter"), tool_ids, len(old))
    old_tokenizer, old_model, old_ids = models.load_stage(parent_dir)
    assert tool_ids[:len(old)] == old_ids
    assert tokenizer.convert_tokens_to_ids(old) == old_tokenizer.convert_tokens_to_ids(old)
    with torch.no_grad():
        embed, old_embed = model.get_input_embeddings(), old_model.get_input_embeddings()
        assert torch.equal(embed(torch.tensor(old_ids)), old_embed(torch.tensor(old_ids)))   # trained rows as they were
        assert torch.equal(embed(new_ids), init)
        # the same LoRA weights and head rows too: on a prompt without new tokens, the logits of the old vocabulary
        # (the old tool tokens included) are the parent's
        ids = old_tokenizer("What is the weather like right now in Lisbon?", return_tensors="pt")["input_ids"]
        n = len(old_tokenizer)
        torch.testing.assert_close(model.eval()(input_ids=ids).logits[..., :n],
                                   old_model.eval()(input_ids=ids).logits[..., :n], rtol=0, atol=0)
    # untrained, the new tokens are not predicted from their documentation: what the stage must teach
    stage = tmp_path / "untrained"
    model.save_pretrained(stage / "adapter")
    for name in ("stage.json", "config.json"):
        shutil.copy(os.path.join(parent_dir, name), stage)
    with open(stage / "tool_tokens.json", "w") as f:
        json.dump(tokens, f)
    ranks = memorization_ranks(stage, f"{out}.data", tokens[len(old):])
    assert (ranks == 0).float().mean() < 0.5 and ranks.float().mean() > 5, ranks.tolist()


def test_two_additions_in_a_row(parent, tmp_path):
    out1, out2 = tmp_path / "added_a", tmp_path / "added_b"
    # A, with the sample's real queries (those naming a new tool are kept), then B on top of A
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out1, "--queries", QUERIES[0],
        "--queries", QUERIES[1], *[a for s in FAST for a in ("--set", s)])
    add("--model", out1, "--api-catalog", parent["b"], "--out", out2, *[a for s in FAST for a in ("--set", s)])
    old = read(os.path.join(parent["dir"], "tool_tokens.json"))
    report_a, report_b = read(f"{out1}.data/add_tools_report.json"), read(f"{out2}.data/add_tools_report.json")
    assert report_a["skipped"]["query_names_no_new_tool"] > 0 and report_a["examples"]["replay"] > 0
    tokens1, tokens2 = read(os.path.join(out1, "tool_tokens.json")), read(os.path.join(out2, "tool_tokens.json"))
    assert tokens1[:len(old)] == old and tokens2[:len(tokens1)] == tokens1
    assert tokens1[len(old):] == report_a["tools_added"] and tokens2[len(tokens1):] == report_b["tools_added"]
    ids = [models.load_tokenizer(os.path.join(d, "tokenizer")).convert_tokens_to_ids(old)
           for d in (parent["dir"], out1, out2)]
    assert ids[0] == ids[1] == ids[2]
    stage = read(os.path.join(out2, "stage.json"))
    assert stage["stage"] == "add_tools" and stage["chain_stage"] == "retrieval"
    assert stage["parent"]["path"] == str(out1) and stage["parent"]["stage"] == "add_tools"
    assert stage["tools_added"] == report_b["tools_added"] and stage["data_file"] == f"{out2}.data/add_tools.json"
    assert set(stage["data_hashes"]["inputs"]["catalog"]) == {parent["b"]}
    # each addition predicts its new tokens from their documentation (constrained, among all 60 / 72 tools; before
    # the stage they rank about in the middle: test_continued_adapter_keeps_every_old_id_and_row)
    for out, report in ((out1, report_a), (out2, report_b)):
        ranks = memorization_ranks(out, f"{out}.data", report["tools_added"])
        assert (ranks == 0).float().mean() >= 0.9 and ranks.max() <= 2, ranks.tolist()
    # the agent's tools and evaluate read the last addition as any stage, with its prepared folder of the whole catalog
    from toolgen.toolset import Toolset
    assert set(report_a["tools_added"] + report_b["tools_added"]) <= set(Toolset.load(str(out2)).tokens)
    from toolgen import evaluate
    evaluate.main(["--model", str(out2), "--data", f"{out2}.data", "--out", str(tmp_path / "eval"),
                   "--no-baselines", "--no-e2e", "--set", "retrieval.prior=none"])
    row = read(tmp_path / "eval" / "metrics.json")["systems"]["toolgen/added_b"]
    assert row["memorization/new_tools_accuracy"] >= 0.9 and "retrieval/ndcg@5" in row


@pytest.mark.parametrize("mode", ["new_rows", "new_rows_head"])
def test_new_rows_only_keeps_the_parent_bit_identical_and_learns_the_new_tokens(parent, tmp_path, monkeypatch, mode):
    """add_tools.train=new_rows (and new_rows_head, through the LM head alone): every LoRA weight and every old tool
    row saved as the parent's, bit for bit; the new rows trained, the loss falls and the new tokens are predicted from
    their documentation."""
    from safetensors.torch import load_file
    out = tmp_path / "rows"
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out,
        *[a for s in FAST + [f"add_tools.train={mode}"] for a in ("--set", s)])
    before = load_file(os.path.join(parent["dir"], "adapter", "adapter_model.safetensors"))
    after = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    n_old = len(read(os.path.join(parent["dir"], "tool_tokens.json")))
    assert set(before) == set(after) and any("trainable_tokens_delta" in k for k in after)
    for key, value in before.items():
        if "trainable_tokens_delta" in key:
            assert torch.equal(after[key][:n_old], value) and after[key].shape[0] > n_old
        else:
            assert torch.equal(after[key], value), key
    history = read(os.path.join(out, "metrics.json"))["loss_history"]
    assert history[-1] < 0.9 * history[0]   # the replayed examples (old rows, frozen) keep their loss
    added = read(f"{out}.data/add_tools_report.json")["tools_added"]
    ranks = memorization_ranks(out, f"{out}.data", added)
    # rows alone learn less on a random 64-wide model than rows + LoRA (>= 0.9 above); untrained: < 0.5 top-1 and
    # a mean rank > 5 (test_continued_adapter_keeps_every_old_id_and_row)
    assert (ranks == 0).float().mean() >= 0.6 and ranks.float().mean() < 2, ranks.tolist()
    # AdamW's decay would move rows without a gradient: refused before any work
    assert "weight_decay=0" in error_of("--model", parent["dir"], "--api-catalog", parent["a"], "--out",
                                        tmp_path / "decay", "--set", f"add_tools.train={mode}",
                                        "--set", "train.weight_decay=0.01")
    # its gradient hook is not ZeRO's: a DeepSpeed launch is refused before the stage is built
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    assert "without DeepSpeed" in error_of("--model", parent["dir"], "--api-catalog", parent["a"], "--out",
                                           tmp_path / "zero", "--set", f"add_tools.train={mode}")


def test_new_rows_lora_moves_the_lora_and_the_new_rows_but_no_old_row(parent, tmp_path):
    """add_tools.train=new_rows_lora: the new rows at the stage's rate and the LoRA weights at
    add_tools.lora_learning_rate (its own optimizer group); the old tool rows stay bit-identical, the LoRA moves,
    the loss falls. The rate belongs to this mode only: a config that mixes them up stops before any work."""
    from safetensors.torch import load_file
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    models.train_new_rows_only(model, len(tool_ids) - 2, keep_lora=True)
    rows, lora = models.lora_param_groups(model, 5e-3, 1e-4)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert (rows["lr"], lora["lr"], len(rows["params"])) == (5e-3, 1e-4, 1) and len(lora["params"]) > 0
    assert len(rows["params"]) + len(lora["params"]) == len(trainable)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["a", tokenizer.convert_ids_to_tokens(tool_ids[0]), "b"])])
    model(input_ids=ids).logits[0, -1, tool_ids].sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in lora["params"])   # every LoRA matrix gets its whole gradient
    out = tmp_path / "rows_lora"
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out,
        *[a for s in FAST + ["add_tools.train=new_rows_lora", "add_tools.lora_learning_rate=1e-3"]
          for a in ("--set", s)])
    before = load_file(os.path.join(parent["dir"], "adapter", "adapter_model.safetensors"))
    after = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    n_old = len(read(os.path.join(parent["dir"], "tool_tokens.json")))
    moved = [k for k in before if "lora_" in k and not torch.equal(after[k], before[k])]
    assert moved and len(moved) == sum("lora_" in k for k in before)   # every LoRA matrix trained
    for key, value in before.items():
        if "trainable_tokens_delta" in key:
            assert torch.equal(after[key][:n_old], value) and not torch.equal(after[key][n_old:], after[key][n_old:] * 0)
    history = read(os.path.join(out, "metrics.json"))["loss_history"]
    assert history[-1] < 0.9 * history[0]
    for sets, needle in ((["add_tools.train=new_rows_lora"], "add_tools.lora_learning_rate=0.0"),
                         (["add_tools.lora_learning_rate=1e-4"], "add_tools.train=all")):
        assert needle in error_of("--model", parent["dir"], "--api-catalog", parent["a"], "--out", tmp_path / "bad",
                                  *[a for s in sets for a in ("--set", s)])


def test_align_new_rows_scales_the_new_rows_to_the_old_rows_mean_norm(parent, tmp_path, monkeypatch):
    """add_tools.align_new_rows (weight aligning): the stage ends with its new rows scaled by one factor, the old rows'
    mean norm over the new rows' mean norm. The same run without it gives the same rows up to that factor, the old
    rows stay the parent's, and stage.json records the factor."""
    from safetensors.torch import load_file
    rows = {}
    for align in ("false", "true"):
        out = tmp_path / f"align_{align}"
        add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", out,
            *[a for s in FAST + ["add_tools.train=new_rows", f"add_tools.align_new_rows={align}"]
              for a in ("--set", s)])
        rows[align] = load_file(os.path.join(out, "adapter", "adapter_model.safetensors"))
    factor = read(tmp_path / "align_true" / "stage.json")["new_rows_scale"]
    assert "new_rows_scale" not in read(tmp_path / "align_false" / "stage.json")
    before = load_file(os.path.join(parent["dir"], "adapter", "adapter_model.safetensors"))
    n_old = len(read(os.path.join(parent["dir"], "tool_tokens.json")))
    keys = [k for k in before if "trainable_tokens_delta" in k]
    assert keys
    for key in keys:
        plain, aligned = rows["false"][key], rows["true"][key]
        assert torch.equal(aligned[:n_old], before[key]) and torch.equal(plain[:n_old], before[key])
        norms = plain.float().norm(dim=-1)
        assert factor == pytest.approx((norms[:n_old].mean() / norms[n_old:].mean()).item(), rel=1e-5)
        torch.testing.assert_close(aligned[n_old:], plain[n_old:] * factor)
        norms = aligned.float().norm(dim=-1)
        assert norms[n_old:].mean().item() == pytest.approx(norms[:n_old].mean().item(), rel=1e-5)
    assert abs(factor - 1) > 0.05   # the short stage's rows are not already at the old rows' norm
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")   # refused before any work
    assert "align_new_rows runs without DeepSpeed" in error_of(
        "--model", parent["dir"], "--api-catalog", parent["a"], "--out", tmp_path / "zero", "--set",
        "add_tools.align_new_rows=true")


def test_align_new_rows_of_an_untied_model_scales_the_head_rows_only(parent, tmp_path):
    """An untied model keeps the tool rows of its input embeddings apart from its LM head's: align_new_rows scales the
    head's new rows and leaves every input row as the same run without it trains them."""
    from safetensors.torch import load_file
    run_stage("memorization", tmp_path, parent["data"], "stages.memorization.max_steps=2",
              "model.tie_word_embeddings=false")
    rows = {}
    for align in ("false", "true"):
        out = tmp_path / f"align_{align}"
        add("--model", tmp_path / "tool_memorization", "--api-catalog", parent["a"], "--out", out,
            *[a for s in FAST + ["stages.add_tools.epochs=2", f"add_tools.align_new_rows={align}"]
              for a in ("--set", s)])
        rows[align] = {k: v for k, v in load_file(os.path.join(out, "adapter", "adapter_model.safetensors")).items()
                       if "trainable_tokens_delta" in k}
    factor = read(tmp_path / "align_true" / "stage.json")["new_rows_scale"]
    n_old = len(read(tmp_path / "tool_memorization" / "tool_tokens.json"))
    head = [k for k in rows["true"] if "lm_head" in k]
    assert len(head) == 1 and len(rows["true"]) == 2 and abs(factor - 1) > 0.01
    for key, aligned in rows["true"].items():
        plain = rows["false"][key]
        expected = plain[n_old:] * factor if key in head else plain[n_old:]
        torch.testing.assert_close(aligned[n_old:], expected)
        assert torch.equal(aligned[:n_old], plain[:n_old])


def test_new_rows_head_runs_the_decoder_without_gradient(parent):
    """new_rows_head: the decoder's activations need no gradient (autograd keeps none of them); the logits do, through
    the tool rows of the LM head, and only the new rows' gradient is not zero."""
    tokenizer, model, tool_ids = models.load_stage(parent["dir"], trainable=True)
    models.train_new_rows_only(model, len(tool_ids) - 2, head_only=True)
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["a", tokenizer.convert_ids_to_tokens(tool_ids[0]), "b"])])
    out = model(input_ids=ids, output_hidden_states=True)
    assert out.logits.requires_grad and not any(h.requires_grad for h in out.hidden_states)
    out.logits[0, -1, tool_ids].sum().backward()
    (grad,) = [p.grad for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert grad[:-2].abs().sum() == 0 and grad[-2:].abs().sum() > 0


def test_a_collision_is_listed_and_nothing_is_trained(parent, tmp_path):
    known = next(line for line in parent["lines"] if line["tool_name"] == "SkyCast")
    changed = {**known, "api_description": "Weather now, rewritten."}
    catalog = write_catalog(tmp_path / "new.jsonl", [changed, *[line for line in parent["lines"]
                                                                 if line["tool_name"] == "VisaCheck"]])
    out = tmp_path / "added"
    message = error_of("--model", parent["dir"], "--api-catalog", catalog, "--out", out)
    assert f"<<SkyCast&&{known['api_name']}>>" in message and "--replace-docs" in message
    assert not os.path.exists(out) and not os.path.exists(f"{out}.data")
    # --replace-docs: the token is kept, its documentation replaced, the old text neither kept nor replayed
    add("--model", parent["dir"], "--api-catalog", catalog, "--out", out, "--replace-docs", "--prepare-only")
    token = f"<<SkyCast&&{known['api_name']}>>"
    report, tools = read(f"{out}.data/add_tools_report.json"), read(f"{out}.data/tool_tokens.json")
    assert report["tools_replaced"] == [token] and token not in report["tools_added"]
    assert tools["tokens"].count(token) == 1 and "rewritten" in tools["tools"][token]["documentation"]
    for name in ("tool_memorization.json", "add_tools.json"):
        docs = [ex["messages"][0]["content"] for ex in read(f"{out}.data/{name}")
                if ex["messages"][-1]["content"] == token]
        assert docs and all("rewritten" in d for d in docs), name


def test_errors_before_any_work(parent, tmp_path):
    out = tmp_path / "added"
    no_stage = tmp_path / "not_a_stage"
    no_stage.mkdir()
    assert "stage.json is missing" in error_of("--model", no_stage, "--api-catalog", parent["a"], "--out", out)
    shutil.copy(os.path.join(parent["dir"], "stage.json"), no_stage)
    assert "tool_tokens.json is missing" in error_of("--model", no_stage, "--api-catalog", parent["a"], "--out", out)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert f"{empty}: empty API catalog" in error_of("--model", parent["dir"], "--api-catalog", empty, "--out", out)
    assert not os.path.exists(out) and not os.path.exists(f"{out}.data")


def test_new_names_never_take_a_models_token_but_may_take_a_distractor():
    doc = {"description": "", "required": [], "optional": []}
    prepared = {"tokens": ["<<SkyCast&&current weather>>", "<<Extra&&thing>>", FINISH], "distractors": 1,
                "tools": {"<<SkyCast&&current weather>>": {"category": "Weather", "tool": "SkyCast",
                                                           "api": "current weather", "input_doc": doc}},
                "collisions": []}
    new = {k: Api(*k, api_description="d") for k in [("Weather2", "SkyCâst", "current weather"),   # folds to SkyCast
                                                     ("Misc", "Extra", "thing"), ("Misc", "Fresh", "one")]}
    names, replaced, collisions = name_new_tools(prepared, new, False, "new.jsonl")
    assert names[("Weather2", "SkyCâst", "current weather")] == "<<SkyCast@Weather2&&current weather>>"
    assert [c["clashed_with"] for c in collisions] == [["Weather", "SkyCast", "current weather"]] and not replaced
    out, added, promoted = tool_tokens_json(prepared, new, names, replaced, collisions)
    assert out["tokens"][:3] == prepared["tokens"] and promoted == ["<<Extra&&thing>>"] and out["distractors"] == 0
    assert added == ["<<Fresh&&one>>", "<<SkyCast@Weather2&&current weather>>"]
    # one token cannot take two new documentations, even with --replace-docs
    twice = {k: Api(*k) for k in [("Weather", "SkyCast", "current weather"), ("Other", "SkyCast", "current weather")]}
    with pytest.raises(AddToolsError, match="<<SkyCast&&current weather>>: keep one"):
        name_new_tools(prepared, twice, True, "new.jsonl")


def test_train_refuses_data_prepared_for_another_parent(parent, tmp_path):
    from accelerate.state import AcceleratorState

    from toolgen import train
    from toolgen.tokens import TokenOrderError
    add("--model", parent["dir"], "--api-catalog", parent["a"], "--out", tmp_path / "x", "--prepare-only")
    tokens = read(tmp_path / "x.data" / "tool_tokens.json")
    tokens["tokens"] = tokens["tokens"][1:]   # not the parent's list followed by the new tokens: ids would move
    with open(tmp_path / "x.data" / "tool_tokens.json", "w") as f:
        json.dump(tokens, f)
    with pytest.raises(TokenOrderError, match="does not begin with the tokens of"):
        try:
            train.main(["--stage", "add_tools", "--parent", parent["dir"], "--config", TINY, "--output-dir",
                        str(tmp_path), "--folder", "x", "--data-dir", str(tmp_path / "x.data")])
        finally:
            AcceleratorState._reset_state(True)


def test_pipeline_runs_an_addition_when_asked(tmp_path):
    out = tmp_path / "run"
    command = ["bash", os.path.join(ROOT, "launch", "pipeline.sh"), "--dry-run", "--config", "launch/configs/tiny.yaml",
               "--output-dir", str(out), "--stages", "add_tools", "--accelerate-config", "launch/accelerate/cpu.yaml"]
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "--new-catalog" in result.stderr and result.stdout == ""
    command += ["--new-catalog", "new.jsonl", "--new-queries", "q.json", "--new-query-writer-cache", "qw.jsonl"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "agent_tuning is missing" in result.stderr   # the default parent: the chain's end
    (out / "agent_tuning").mkdir(parents=True)
    (out / "agent_tuning" / "stage.json").write_text("{}")
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    prepare_line = next(line for line in lines if "toolgen.add_tools" in line)
    train_line = next(line for line in lines if "--stage" in line)
    eval_line = lines[-1]

    def flag(line, name):
        return line[line.index(name) + 1]
    assert "--prepare-only" in prepare_line and flag(prepare_line, "--model") == str(out / "agent_tuning")
    assert flag(prepare_line, "--api-catalog") == str(tmp_path / "new.jsonl")
    assert flag(prepare_line, "--queries") == str(tmp_path / "q.json")
    assert flag(prepare_line, "--query-writer-cache") == str(tmp_path / "qw.jsonl")
    assert flag(train_line, "--stage") == "add_tools"
    assert flag(train_line, "--data-dir") == flag(eval_line, "--data") == str(out / "added_tools.data")
    assert flag(eval_line, "--model") == str(out / "added_tools")


def sweep_choice(tmp_path, scores, new_queries, memorization, parent=None):
    """Sweep evaluations as add_tools.sh writes them, {cand: (val_new, val_old)} -> chosen.json. The worst candidate on
    validation is the best on test: that must not matter. parent: its (model, +prior) old-only validation NDCG@5."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import add_tools_report
    if parent:
        add_tools_report.write_json(str(tmp_path / "eval_sweep_parent" / "metrics.json"), {"systems": {
            "bm25": {"queries/val_old/ndcg@5": 0.5}, "toolgen/retrieval_training": {"queries/val_old/ndcg@5": parent[0]},
            "toolgen/retrieval_training+prior": {"queries/val_old/ndcg@5": parent[1]}}})
    for cand, (new, old) in scores.items():
        folder = "sweep_" + cand.replace(":", "_")
        test = 1.0 if cand == "0.3:1e-3" else 0.0
        row = {"queries/val_new/ndcg@5": new, "queries/val_old/ndcg@5": old, "queries/val_new/queries": new_queries,
               "queries/test_new/ndcg@5": test, "queries/test_old/ndcg@5": test}
        model = {"memorization/new_tools_accuracy": memorization[cand]}
        add_tools_report.write_json(str(tmp_path / f"eval_{folder}" / "metrics.json"),
                                    {"systems": {f"toolgen/{folder}+prior": row, f"toolgen/{folder}": model}})
    add_tools_report.main(["choose", "--run", str(tmp_path), "--candidates", *scores])
    return json.load(open(tmp_path / "chosen.json"))


def test_the_sweep_picks_the_best_validation_score_and_never_reads_test(tmp_path):
    """benchmarks/add_tools.sh's sweep, among the candidates that memorize the new tools (>= 0.95): with enough
    new-only validation queries, the best new-only NDCG@5 (with the prior) among those whose old-only NDCG@5 stays
    within the target's 1 point of the parent's, else the smallest drop; with too few (1 at VAL_FRACTION 0.1) the
    best old-only NDCG@5. choose writes the pick for the timed addition."""
    scores = {"0.3:1e-3": (0.90, 0.40), "0.7:3e-4": (0.80, 0.70), "0.5:5e-4": (0.85, 0.60), "0.9:1e-4": (0.6, 0.71)}
    memorization = {"0.3:1e-3": 0.99, "0.7:3e-4": 0.97, "0.5:5e-4": 0.98, "0.9:1e-4": 0.97}
    # parent 0.71 with the prior: 0.7:3e-4 loses exactly 1 point (within), 0.9:1e-4 none; the best new-only wins
    chosen = sweep_choice(tmp_path / "many", scores, 12, memorization, parent=(0.70, 0.71))
    assert (chosen["replay_fraction"], chosen["learning_rate"]) == (0.7, 3e-4)
    assert chosen["validation_scores"] == {"0.3:1e-3": pytest.approx(-31.0), "0.7:3e-4": 0.80,
                                           "0.5:5e-4": pytest.approx(-11.0), "0.9:1e-4": 0.6}
    assert chosen["validation_tiers"]["0.7:3e-4"].startswith("new-only") and "old-only" in chosen["rule"]
    # no candidate keeps the old tools within the target: the smallest drop, not the best new-only score
    chosen = sweep_choice(tmp_path / "none_within", {"0.3:1e-3": (0.95, 0.60), "0.7:3e-4": (0.70, 0.80)}, 12,
                          dict.fromkeys(("0.3:1e-3", "0.7:3e-4"), 0.97), parent=(0.80, 0.85))
    assert chosen["candidate"] == "0.7:3e-4" and chosen["validation_scores"]["0.7:3e-4"] == pytest.approx(-5.0)
    # the rule reads the parent's old-only score: without its evaluation it stops, naming the file
    with pytest.raises(SystemExit, match="eval_sweep_parent"):
        sweep_choice(tmp_path / "no_parent", scores, 12, memorization)
    scores = {"0.3:1e-3": (1.0, 0.40), "0.7:3e-4": (0.0, 0.80), "0.5:5e-4": (1.0, 0.70)}   # one new-only query
    memorization["0.7:3e-4"] = 0.90   # the best old-only score, but it does not learn the new tools
    chosen = sweep_choice(tmp_path / "few", scores, 1, memorization, parent=(0.72, 0.85))
    assert (chosen["replay_fraction"], chosen["learning_rate"]) == (0.5, 5e-4)
    assert chosen["validation_scores"] == {"0.3:1e-3": 0.40, "0.7:3e-4": 0.0, "0.5:5e-4": 0.70}
    # the parent's old-only validation scores beside the candidates' (the forgetting on validation)
    assert chosen["validation_old_only"]["parent"] == {"model": 0.72, "model+prior": 0.85}
    assert chosen["validation_old_only"]["0.5:5e-4"]["model+prior"] == 0.70
    # what add_tools.sh hands the timed addition (the earlier inline reader died on a SyntaxError unseen, and the
    # addition silently ran with the config's values)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "few")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split() == ["--set", "add_tools.replay_fraction=0.5", "--set", "stages.add_tools.learning_rate=0.0005",
                             "--set", "add_tools.train=all"]
    # a candidate may name add_tools.train (replay:lr:new_rows)
    scores = {"0.3:1e-3": (1.0, 0.40), "0.3:1e-2:new_rows": (1.0, 0.75)}
    chosen = sweep_choice(tmp_path / "rows", scores, 1, {"0.3:1e-3": 0.99, "0.3:1e-2:new_rows": 0.96})
    assert (chosen["replay_fraction"], chosen["learning_rate"], chosen["train"]) == (0.3, 1e-2, "new_rows")
    assert "epochs" not in chosen   # the config's
    # ... and the epochs (the addition's time): replay:lr:train:epochs, handed on as a flag
    scores = {"0.3:1e-2:new_rows": (1.0, 0.75), "0.5:3e-3:new_rows:1": (1.0, 0.77)}
    chosen = sweep_choice(tmp_path / "epochs", scores, 1, {"0.3:1e-2:new_rows": 0.96, "0.5:3e-3:new_rows:1": 0.95})
    assert (chosen["replay_fraction"], chosen["train"], chosen["epochs"]) == (0.5, "new_rows", 1)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "epochs")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split()[-2:] == ["--set", "stages.add_tools.epochs=1"]
    # ... and new_rows_lora's LoRA rate, the epochs left to the config (an empty field)
    scores = {"0.3:1e-2:new_rows": (1.0, 0.75), "0.5:1e-2:new_rows_lora::1e-4": (1.0, 0.78)}
    chosen = sweep_choice(tmp_path / "lora", scores, 1, dict.fromkeys(scores, 0.97))
    assert (chosen["train"], chosen["lora_learning_rate"], "epochs" in chosen) == ("new_rows_lora", 1e-4, False)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "lora")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split()[-4:] == ["--set", "add_tools.train=new_rows_lora", "--set", "add_tools.lora_learning_rate=0.0001"]
    # a sixth field: add_tools.distill_weight (toolgen/distill.py)
    scores = {"0.5:1e-3:all:2::5": (1.0, 0.80), "0.5:1e-3:all:2": (1.0, 0.70)}
    chosen = sweep_choice(tmp_path / "distill", scores, 1, dict.fromkeys(scores, 0.97))
    assert (chosen["train"], chosen["epochs"], chosen["distill_weight"], "lora_learning_rate" in chosen) == \
        ("all", 2, 5.0, False)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "distill")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split()[-2:] == ["--set", "add_tools.distill_weight=5.0"]
    # a seventh: add_tools.lora_layers (only the last layers' LoRA moves)
    scores = {"0.5:1e-2:new_rows_lora:1:1e-3:5:4": (1.0, 0.80), "0.5:1e-2:new_rows_lora:1:1e-3:5": (1.0, 0.70)}
    chosen = sweep_choice(tmp_path / "layers", scores, 1, dict.fromkeys(scores, 0.97))
    assert (chosen["lora_learning_rate"], chosen["distill_weight"], chosen["lora_layers"]) == (1e-3, 5.0, 4)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "layers")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split()[-4:] == ["--set", "add_tools.distill_weight=5.0", "--set", "add_tools.lora_layers=4"]
    # an eighth: "new" for add_tools.distill_new_tools
    scores = {"0.5:1e-2:new_rows_lora:1:1e-3:5:4:new": (1.0, 0.80), "0.5:1e-2:new_rows_lora:1:1e-3:5:4": (1.0, 0.70)}
    chosen = sweep_choice(tmp_path / "guard", scores, 1, dict.fromkeys(scores, 0.97))
    assert (chosen["lora_layers"], chosen["distill_new_tools"]) == (4, True)
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "guard")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags.split()[-2:] == ["--set", "add_tools.distill_new_tools=true"]
    # flags after the positional fields, in any order: "align" for add_tools.align_new_rows; the sweep's own
    # candidates get their flags from the same parser (add_tools.sh: add_tools_report.py flags)
    scores = {"0.3:1e-2:new_rows_lora:2:1e-3:1:4:align:new": (1.0, 0.80),
              "0.3:1e-2:new_rows_lora:2:1e-3:1:4": (1.0, 0.70)}
    chosen = sweep_choice(tmp_path / "align", scores, 1, dict.fromkeys(scores, 0.97))
    assert (chosen["align_new_rows"], chosen["distill_new_tools"]) == (True, True)
    assert chosen["candidate"] == "0.3:1e-2:new_rows_lora:2:1e-3:1:4:align:new"
    flags = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "chosen-flags", "--run",
                            str(tmp_path / "align")], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    sweep = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "flags", "--candidate",
                            chosen["candidate"]], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert flags == sweep and flags.split()[-4:] == ["--set", "add_tools.distill_new_tools=true",
                                                     "--set", "add_tools.align_new_rows=true"]
    parent = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "flags", "--candidate",
                             "0.3:1e-2:new_rows_lora:2:1e-3:0:4:parent"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout   # "parent" for add_tools.parent_scores
    assert parent.split()[-4:] == ["--set", "add_tools.lora_layers=4", "--set", "add_tools.parent_scores=true"]
    for bad, needle in (("0.3:1e-2:new_rows_lora:2:1e-3:1:4:nwe", "unknown flag 'nwe' (known: new, align, parent)"),
                        ("0.3", "expected REPLAY:LR"), ("0.3:fast", "learning_rate 'fast' is not a number")):
        run = subprocess.run([sys.executable, "benchmarks/add_tools_report.py", "flags", "--candidate", bad],
                             cwd=ROOT, capture_output=True, text=True)
        assert run.returncode != 0 and needle in run.stderr and "Traceback" not in run.stderr, run.stderr
    # with enough new-only validation queries the memorization bar still holds: the best mean that does not
    # memorize the new tools scores 0
    scores = {"0.3:1e-3": (0.95, 0.80), "0.7:3e-4": (0.80, 0.70)}
    chosen = sweep_choice(tmp_path / "bar", scores, 12, {"0.3:1e-3": 0.90, "0.7:3e-4": 0.96}, parent=(0.7, 0.7))
    assert chosen["candidate"] == "0.7:3e-4" and chosen["validation_scores"]["0.3:1e-3"] == 0.0


def test_the_sweep_keeps_to_the_time_target(tmp_path):
    """The addition must take at most 25 % of the full retrain: a candidate that took longer is not chosen, however
    it scores (the last real sweep picked 3 epochs, 72.0 s of a 264.7 s retrain: 27.2 %). Without the retrain's time
    nothing is filtered; when nothing fits, nothing is either, and chosen.json says so."""
    scores = {"0.5:1e-2:new_rows_head": (1.0, 0.78), "0.5:1e-2:new_rows_head:3": (1.0, 0.80)}
    memorization = dict.fromkeys(scores, 0.97)
    took = {"sweep_0.5_1e-2_new_rows_head": 56.0, "sweep_0.5_1e-2_new_rows_head_3": 72.0}
    for name, full, pick, checked in (("fits", 264.7, "0.5:1e-2:new_rows_head", True),
                                      ("untimed", None, "0.5:1e-2:new_rows_head:3", False),
                                      ("none_fit", 100.0, "0.5:1e-2:new_rows_head:3", False)):
        run = tmp_path / name
        run.mkdir()
        for file, value in {**took, **({"full_retrain": full} if full else {})}.items():
            (run / f"seconds_{file}").write_text(str(value))
        chosen = sweep_choice(run, scores, 1, memorization)
        assert chosen.get("epochs", "config") == (3 if pick.endswith(":3") else "config")
        assert chosen["time"]["checked"] is checked and chosen["time"]["seconds_full_retrain"] == full
    assert chosen["time"]["why"] == "no candidate fits: all kept"


def test_a_params_parent_gets_params_docs_for_new_tools_and_keeps_its_old_ones(tmp_path):
    """A parent prepared with --input-doc params: the new tools' input docs carry their parameters too, and an old
    tool rebuilt from tool_tokens.json (old_catalog: what new trajectories calling it are written with) shows exactly
    the doc the parent learnt; trained_input_doc reads the mode a stage learnt from its prepared folder."""
    from toolgen.add_tools_data import old_catalog
    from toolgen.data import stages
    from toolgen.toolset import trained_input_doc
    old = Api("Weather", "SkyCast", "current weather", api_description="Now.",
              required=(json.dumps({"name": "city", "type": "STRING", "description": "A **city**."}),),
              optional=(json.dumps({"name": "units", "type": "string", "enum": ["C", "F"]}),))
    doc = json.loads(stages.api_input_doc(old, params=True))
    token = "<<SkyCast&&current weather>>"
    prepared = {"tokens": [token, FINISH], "distractors": 0, "input_doc": "params", "collisions": [],
                "tools": {token: {"category": "Weather", "tool": "SkyCast", "api": "current weather", "input_doc": doc}}}
    apis, names = old_catalog(prepared["tools"])
    assert names[old.key] == token and stages.api_input_doc(apis[old.key], params=True) == json.dumps(doc)
    new = {("Misc", "Fresh", "one"): Api("Misc", "Fresh", "one", required=(json.dumps({"name": "x", "type": "number"}),))}
    names, replaced, collisions = name_new_tools(prepared, new, False, "new.jsonl")
    out, _, _ = tool_tokens_json(prepared, new, names, replaced, collisions)
    assert out["tools"]["<<Fresh&&one>>"]["input_doc"]["parameters"] == {"x": "number"}
    assert out["tools"][token]["input_doc"] == doc and out["input_doc"] == "params"
    stage = tmp_path / "stage"
    stage.mkdir()
    (tmp_path / "tool_tokens.json").write_text(json.dumps(out))
    (stage / "stage.json").write_text(json.dumps({"data_file": str(tmp_path / "add_tools.json")}))
    assert trained_input_doc(str(stage)) == "params"
    older = {k: v for k, v in out.items() if k != "input_doc"}   # prepared before --input-doc existed
    (tmp_path / "tool_tokens.json").write_text(json.dumps(older))
    assert trained_input_doc(str(stage)) == "names"
    (stage / "stage.json").write_text("{}")
    assert trained_input_doc(str(stage)) is None   # nothing to read: unknown (the agent CLI warns)


def test_the_llm_view_of_new_tools_comes_from_a_query_writer_cache(parent, tmp_path):
    """llm in add_tools.views: the new tools' requests are read from --query-writer-cache (no model is loaded), one
    retrieval example per kept request; without the file, with an API missing from it, or with the file but no llm
    view, the command stops before writing anything."""
    from toolgen import query_writer
    from toolgen.checkpoint import file_sha256
    from toolgen.data.toolbench import read_api_jsonl
    apis = read_api_jsonl(parent["a"])
    opts = query_writer.WriterOptions()
    answer = "\n".join(["I want to plan something fun for my family this weekend",
                        "Could you check what my options are before Friday evening",
                        "Please help me compare the choices I have for tomorrow morning"])
    records = [query_writer.cache_record(a, "hand-written", query_writer.writer_prompt(a, opts.queries_per_api),
                                         opts.generation(), answer, opts.queries_per_api) for a in apis]
    cache = tmp_path / "query_writer.jsonl"
    cache.write_text("".join(json.dumps(r) + "\n" for r in records))
    views = "add_tools.views=name,llm"
    out = tmp_path / "added"
    base = ["--model", parent["dir"], "--api-catalog", parent["a"], "--out", out, "--prepare-only"]
    assert "give --query-writer-cache FILE" in error_of(*base, "--set", views)
    assert "add llm to add_tools.views" in error_of(*base, "--query-writer-cache", cache)
    partial = tmp_path / "partial.jsonl"   # one API left out, one written for another documentation
    redone = dataclasses.replace(apis[1], api_description="Another text.")
    other = query_writer.cache_record(redone, "hand-written", query_writer.writer_prompt(redone, 3), opts.generation(),
                                      answer, 3)
    partial.write_text("".join(json.dumps(r) + "\n" for r in [other] + records[2:]))
    said = error_of(*base, "--set", views, "--query-writer-cache", partial)
    assert f"--query-writer-cache {partial}: 2 of the {len(apis)} new APIs have no answer" in said
    assert f"python -m toolgen.query_writer --catalog {parent['a']} --model MODEL" in said
    said = error_of(*base, "--set", views, "--query-writer-cache", cache, "--writer-queries-per-api", 5)
    assert f"{len(apis)} of the {len(apis)} new APIs have no answer for 5 queries per API" in said
    memorization_parent = os.path.join(parent["root"], "out", "tool_memorization")
    said = error_of("--model", memorization_parent, "--api-catalog", parent["a"], "--out", out, "--prepare-only",
                    "--set", views, "--query-writer-cache", cache)
    assert "is a memorization stage, which does not retrieve" in said
    assert not os.path.exists(f"{out}.data")
    add(*base, "--set", views, "--query-writer-cache", cache)
    report = read(f"{out}.data/add_tools_report.json")
    kept = sum(len(r["queries"]) for r in records)
    assert kept > 0 and report["views"]["llm"]["examples"] == kept
    assert report["query_writer"]["from_cache"] == len(apis) and report["query_writer"]["queries_kept"] == kept
    assert report["data_hashes"]["inputs"]["query_writer_cache"] == {str(cache): file_sha256(str(cache))}
    asked = {ex["messages"][0]["content"] for ex in read(f"{out}.data/add_tools.json")}
    assert {q for r in records for q in r["queries"]} <= asked
