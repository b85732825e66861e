"""benchmarks/quality_report.py: which rows it chooses (on validation, never on test), what it reports per source and
per base model."""

import json
import subprocess
import sys

from conftest import ROOT


def test_quality_report_chooses_on_validation_and_reports_test(tmp_path):
    """benchmarks/quality_report.py: `toolgen` is the model-only stage with the best VALIDATION NDCG@5 (not the best
    on test), `toolgen_hybrid` the +prior row with the best validation NDCG@5; e2e metrics land per source."""

    def system(test, val=None, memo=None, choice=None):
        m = {f"retrieval/{k}": test for k in ("ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5")}
        m.update({"retrieval/G1_instruction/ndcg@5": test})
        if val is not None:
            m["val/ndcg@5"] = val
        if memo is not None:
            m["memorization/accuracy"] = memo
        if choice is not None:
            m["prior/choice"] = {"val_ndcg@5": choice, "ablation": {"none": {"setting": {}, "val_ndcg@5": 0.1,
                                                                            "test_ndcg@5": 0.2}}}
        return m
    files = {"main": {"bm25": system(0.6), "minilm": system(0.5), "base": system(0.0),
                      "toolgen/tool_memorization": system(0.3, 0.3, memo=0.97),
                      "toolgen/retrieval_training": system(0.9, val=0.4),   # best on test, not on validation
                      "toolgen/agent_tuning": system(0.7, val=0.5),
                      "toolgen/retrieval_training+prior": system(0.8, choice=0.6),
                      "toolgen/agent_tuning+prior": system(0.95, choice=0.55)},
             "views": {"toolgen/retrieval_training": system(0.65, val=0.45)},
             "e2e": {"toolgen/agent_tuning": {"agent_e2e/complexfuncbench/call_accuracy": 0.25,
                                              "agent_e2e/complexfuncbench/e2e_extra": 1}}}
    for name, systems in files.items():
        with open(tmp_path / f"{name}.json", "w") as f:
            json.dump({"systems": systems}, f)
    cmd = [sys.executable, "benchmarks/quality_report.py", "--main", str(tmp_path / "main.json"),
           "--run", f"views_base={tmp_path / 'views.json'}", "--e2e", str(tmp_path / "e2e.json"),
           "--e2e", str(tmp_path / "missing.json"), "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert "left out" in out
    result = json.load(open(tmp_path / "out" / "quality.json"))
    assert result["toolgen_system"] == "toolgen/main/agent_tuning" and result["overall"]["toolgen"]["ndcg@5"] == 0.7
    assert result["toolgen_hybrid_system"] == "toolgen/main/retrieval_training+prior"
    assert result["overall"]["toolgen_hybrid"]["ndcg@5"] == 0.8
    assert result["per_split"]["G1_instruction"]["bm25"]["ndcg@5"] == 0.6
    assert result["memorization_accuracy"] == 0.97
    assert result["agent_e2e"] == {"complexfuncbench": {"toolgen/main/agent_tuning": {"call_accuracy": 0.25}}}
    assert result["views_ablation"]["toolgen/views_base/retrieval_training"] == {"val_ndcg@5": 0.45, "test_ndcg@5": 0.65}

    # a second base model on the same data: its rows, its untrained base, its e2e and a summary per base model
    qwen = {"bm25": system(0.6), "base": system(0.05), "toolgen/tool_memorization": system(0.4, 0.4, memo=0.99),
            "toolgen/retrieval_training": system(0.75, val=0.7), "toolgen/agent_tuning": system(0.6, val=0.45),
            "toolgen/retrieval_training+prior": system(0.78, choice=0.5)}
    qwen["toolgen/agent_tuning"]["agent/tool_selection_accuracy"] = 0.6
    with open(tmp_path / "qwen.json", "w") as f:
        json.dump({"systems": qwen}, f)
    with open(tmp_path / "qwen_e2e.json", "w") as f:
        json.dump({"systems": {"toolgen/agent_tuning": {"agent_e2e/nestful/call_accuracy": 0.5}}}, f)
    subprocess.run(cmd + ["--run", f"qwen={tmp_path / 'qwen.json'}", "--run-model", "qwen=Qwen 0.5B",
                          "--e2e", f"qwen={tmp_path / 'qwen_e2e.json'}"], cwd=ROOT, check=True, capture_output=True)
    result = json.load(open(tmp_path / "out" / "quality.json"))
    assert result["toolgen_system"] == "toolgen/qwen/retrieval_training"   # the best validation across base models
    assert result["memorization_accuracy"] == 0.99 and result["overall"]["toolgen"]["ndcg@5"] == 0.75
    assert result["systems"]["base/qwen"]["retrieval/ndcg@5"] == 0.05
    assert result["agent_e2e"]["nestful"] == {"toolgen/qwen/agent_tuning": {"call_accuracy": 0.5}}
    q = result["base_models"]["qwen"]
    assert (q["model"], q["toolgen"], q["toolgen_ndcg@5"], q["toolgen_hybrid_ndcg@5"]) == (
        "Qwen 0.5B", "toolgen/qwen/retrieval_training", 0.75, 0.78)
    assert q["agent_step_tool_selection"] == 0.6 and q["memorization_accuracy"] == 0.99
    assert result["base_models"]["main"]["toolgen"] == "toolgen/main/agent_tuning"
    assert result["base_models"]["main"]["agent_e2e"] == {"complexfuncbench": {"toolgen/main/agent_tuning":
                                                                                {"call_accuracy": 0.25}}}

    # --stepwise: a later step-wise evaluation of a run's agent stage replaces its agent/* metrics (nothing else)
    with open(tmp_path / "stepwise.json", "w") as f:
        json.dump({"systems": {"toolgen/agent_tuning": {"agent/tool_selection_accuracy": 0.7,
                                                        "agent/tool_selection_accuracy_any_order": 0.9,
                                                        "retrieval/ndcg@5": 0.0},
                               "toolgen/agent_tuning+prior": {"agent/tool_selection_accuracy": 0.8}}}, f)
    subprocess.run(cmd + ["--run", f"qwen={tmp_path / 'qwen.json'}", "--run-model", "qwen=Qwen 0.5B",
                          "--stepwise", f"qwen={tmp_path / 'stepwise.json'}"], cwd=ROOT, check=True,
                   capture_output=True)
    result = json.load(open(tmp_path / "out" / "quality.json"))
    step = result["agent_step_toolbench"]
    assert (step["tool_selection_accuracy"], step["tool_selection_accuracy_any_order"]) == (0.7, 0.9)
    assert step["with_prior"] == {"tool_selection_accuracy": 0.8} and step["source"] == [f"qwen={tmp_path}/stepwise.json"]
    assert result["systems"]["toolgen/qwen/agent_tuning"]["retrieval/ndcg@5"] == 0.6   # only agent/* was taken



def test_quality_report_summarises_a_base_model_known_only_by_its_agent_stage(tmp_path):
    """A --run-model whose rows are end-to-end and step-wise only (no retrieval evaluated on validation): its summary
    has no retrieval choice, its agent numbers, and the choice among the other runs' retrieval rows is unchanged."""
    row = {f"retrieval/{k}": 0.5 for k in ("ndcg@1", "ndcg@3", "ndcg@5", "mrr", "recall@5")}
    files = {"main": {"bm25": row, "minilm": row, "base": row,
                      "toolgen/tool_memorization": {**row, "memorization/accuracy": 0.9},
                      "toolgen/retrieval_training": {**row, "val/ndcg@5": 0.4}},
             "e2e": {"toolgen/agent_tuning": {"agent_e2e/nestful/call_accuracy": 0.5}},
             "step": {"toolgen/agent_tuning": {"agent/tool_selection_accuracy": 0.7, "retrieval/ndcg@5": 0.6}}}
    for name, systems in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"systems": systems}))
    subprocess.run([sys.executable, "benchmarks/quality_report.py", "--main", str(tmp_path / "main.json"),
                    "--run-model", "big=Qwen 1.5B", "--e2e", f"big={tmp_path / 'e2e.json'}",
                    "--stepwise", f"big={tmp_path / 'step.json'}", "--out", str(tmp_path / "out")],
                   cwd=ROOT, check=True, capture_output=True)
    result = json.load(open(tmp_path / "out" / "quality.json"))
    big = result["base_models"]["big"]
    assert (big["model"], big["toolgen"], big["toolgen_ndcg@5"], big["agent_step_tool_selection"]) == (
        "Qwen 1.5B", None, None, 0.7)
    assert big["agent_e2e"] == {"nestful": {"toolgen/big/agent_tuning": {"call_accuracy": 0.5}}}
    assert result["toolgen_system"] == "toolgen/main/retrieval_training"
