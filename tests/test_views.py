"""Stage-2 views (toolgen/data/views.py) and the validation split, on the shipped sample and the real data."""

import collections
import json
import os

import pytest

from conftest import SHARED, needs_shared
from toolgen.data import SAMPLE_DIR, stages, views
from toolgen.data.toolbench import Api, Catalog, DataError, read_api_jsonl
from toolgen.prepare import main, prepare
from toolgen.tokens import tool_token_names

ALL = ("name", "ask", "params", "multi_tool", "multi_category")


@pytest.fixture(scope="module")
def with_views():
    return prepare(SAMPLE_DIR, views=ALL)


def texts(records):
    return {r["messages"][0]["content"] for r in records}


def by_query(examples):
    """{query text: [targets]} of the synthetic examples."""
    out = collections.defaultdict(list)
    for ex in examples:
        if ex.get("synthetic"):
            out[ex["messages"][0]["content"]].append(ex["target"])
    return out


def test_synthetic_queries_2_is_the_view_list_name_ask_and_unchanged():
    """--synthetic-queries 2 = --views name,ask, file for file; its examples are those the option always wrote."""
    old = prepare(SAMPLE_DIR, synthetic_queries=2)
    assert old == prepare(SAMPLE_DIR, views=views.parse_views("ask,name"))
    assert prepare(SAMPLE_DIR, synthetic_queries=1) == prepare(SAMPLE_DIR, views=("name",))
    catalog = Catalog(read_api_jsonl(os.path.join(SAMPLE_DIR, "catalog.jsonl")))
    names, _ = tool_token_names(list(catalog.apis))
    expected = [{**stages.retrieval_example(text, names[k]), "synthetic": True}   # the loop prepare.py had
                for k in sorted(catalog.apis) for text in stages.synthetic_queries(catalog.apis[k], 2)]
    assert [ex for ex in old["retrieval_training.json"] if ex.get("synthetic")] == expected
    plain = prepare(SAMPLE_DIR)
    assert [ex for ex in old["retrieval_training.json"] if not ex.get("synthetic")] == plain["retrieval_training.json"]


def test_view_names_are_checked_and_order_free():
    assert views.parse_views("params, name") == ("name", "params")
    with pytest.raises(DataError, match="--views 'name,nope': unknown view nope; the views are name, ask"):
        views.parse_views("name,nope")
    with pytest.raises(SystemExit):
        main(["--out", "unused", "--views", "bogus"])


def tool_info(out):
    return out["tool_tokens.json"]["tools"]


@pytest.mark.parametrize("view", ["multi_tool", "multi_category"])
def test_multi_api_queries_carry_all_their_labels_of_one_tool_or_category(view):
    out = prepare(SAMPLE_DIR, views=(view,))
    info = tool_info(out)
    queries = by_query(out["retrieval_training.json"])
    assert queries and all(2 <= len(targets) <= 3 for targets in queries.values())
    for text, targets in queries.items():
        assert len(set(targets)) == len(targets)
        if view == "multi_tool":
            assert len({(info[t]["category"], info[t]["tool"]) for t in targets}) == 1, text
        else:
            assert len({info[t]["category"] for t in targets}) == 1, text
            assert len({info[t]["tool"] for t in targets}) == len(targets), text   # each of another tool
    covered = {t for targets in queries.values() for t in targets}
    per_tool = collections.Counter((v["category"], v["tool"]) for v in info.values())
    if view == "multi_tool":   # every API of a tool with two or more APIs is in a request
        assert covered == {t for t, v in info.items() if per_tool[(v["category"], v["tool"])] >= 2}
    else:
        assert covered == set(info)
    report = out["prepare_report.json"]["views"][view]
    assert report == {"queries": len(queries), "examples": sum(map(len, queries.values()))}
    assert out == prepare(SAMPLE_DIR, views=(view,))                      # deterministic given the seed
    assert by_query(prepare(SAMPLE_DIR, views=(view,), seed=1)["retrieval_training.json"]) != queries


def test_more_rounds_put_each_api_in_more_multi_api_requests():
    one = by_query(prepare(SAMPLE_DIR, views=("multi_tool",))["retrieval_training.json"])
    two = by_query(prepare(SAMPLE_DIR, views=("multi_tool",), multi_rounds=2)["retrieval_training.json"])
    assert sum(map(len, two.values())) == 2 * sum(map(len, one.values()))


def test_params_view_contains_the_example_values():
    catalog = Catalog(read_api_jsonl(os.path.join(SAMPLE_DIR, "catalog.jsonl")))
    names, _ = tool_token_names(list(catalog.apis))
    out = prepare(SAMPLE_DIR, views=("params",))
    written = {t[0]: text for text, t in by_query(out["retrieval_training.json"]).items()}
    assert len(written) == len(catalog.apis)   # every sample API has a parameter
    for key, api in catalog.apis.items():
        params = api.params("required") or api.params("optional")
        for p in params[:3]:
            assert str(p["default"]) in written[names[key]], (key, written[names[key]])
        assert api.tool not in written[names[key]]
    assert "Lisbon" in written[names[("Weather", "SkyCast", "current weather")]]


def test_params_view_uses_descriptions_without_example_values():
    param = json.dumps({"name": "stateIsoCode", "type": "STRING", "description": "ISO code of the state", "default": ""})
    api = Api("Logistics", "Carriers", "/cities/search", api_description="Search city by state.", required=(param,))
    text = views.params_query(api, 0)
    assert text == "Please search city by state. I can give you the state iso code (ISO code of the state)."
    assert views.params_query(Api("C", "T", "ping"), 0) is None   # nothing to give: no params query


def test_task_clause_reads_as_a_request():
    assert views.task_clause(Api("C", "T", "a", api_description="Returns the list of coins.")) == "get the list of coins"
    assert views.task_clause(Api("C", "T", "a", api_description="This endpoint verifies an email. Extra.")) == \
        "verify an email"
    assert views.task_clause(Api("C", "T", "a", api_description="Latitude and longitude of an address.")) == \
        "get latitude and longitude of an address"
    assert views.task_clause(Api("C", "T", "Get all jokes")) == "get all jokes"


def test_views_stay_out_of_the_held_out_splits(with_views):
    held_out = texts(with_views["retrieval_test.json"]) | texts(with_views["retrieval_val.json"])
    assert held_out and not held_out & texts(with_views["retrieval_training.json"])
    counts = with_views["prepare_report.json"]["views"]
    assert list(counts) == list(ALL)
    assert sum(c["examples"] for c in counts.values()) == \
        sum(1 for ex in with_views["retrieval_training.json"] if ex.get("synthetic"))


def test_a_view_text_equal_to_a_held_out_query_is_dropped_and_counted(tmp_path):
    """A test query that happens to be a view's text (here the name view's): never a training text."""
    root = tmp_path / "in"
    (root / "instruction").mkdir(parents=True)
    (root / "catalog.jsonl").write_text(json.dumps({"category_name": "C", "tool_name": "T", "api_name": "a",
                                                    "api_description": "does a"}) + "\n")
    text = "I want to use T to a: does a"
    (root / "instruction" / "G1_query.json").write_text(json.dumps(
        [{"query": text, "query_id": 1, "relevant APIs": [["T", "a"]]}]))
    out = prepare(str(root), views=("name", "ask"), test_fraction=0.9999)
    assert texts(out["retrieval_test.json"]) == {text}
    assert text not in texts(out["retrieval_training.json"])
    assert out["prepare_report.json"]["skipped"]["view_query_equal_to_held_out_query"] == 1
    assert out["prepare_report.json"]["views"] == {"ask": {"queries": 1, "examples": 1}}


# ---- the validation split -------------------------------------------------------------------------------------------

def test_val_split_is_disjoint_deterministic_and_leaves_test_alone(sample_data):
    out = prepare(SAMPLE_DIR)   # default --val-fraction 0.1
    val, test, train = (texts(out[f]) for f in ("retrieval_val.json", "retrieval_test.json", "retrieval_training.json"))
    assert val and not val & test and not val & train
    assert out["retrieval_val.json"] == prepare(SAMPLE_DIR)["retrieval_val.json"]
    assert set(out["retrieval_val.json"][0]) == set(out["retrieval_test.json"][0])   # the same record format
    none = prepare(SAMPLE_DIR, val_fraction=0)
    assert none["retrieval_val.json"] == [] and none["retrieval_test.json"] == out["retrieval_test.json"]
    assert prepare(SAMPLE_DIR, val_fraction=0.5)["retrieval_test.json"] == out["retrieval_test.json"]
    assert texts(none["retrieval_training.json"]) == train | val   # carved from the training queries
    with open(os.path.join(sample_data, "retrieval_val.json")) as f:
        assert json.load(f) == out["retrieval_val.json"]
    assert prepare(SAMPLE_DIR, seed=1)["retrieval_val.json"] != out["retrieval_val.json"]


def test_val_fraction_must_be_a_fraction(tmp_path):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "out"), "--val-fraction", "1"])
    main(["--out", str(tmp_path / "out"), "--val-fraction", "0"])
    with open(tmp_path / "out" / "retrieval_val.json") as f:
        assert json.load(f) == []


@needs_shared
def test_real_data_views_and_splits():
    """The quality.sh inputs: the test split is the same with and without the views and the validation split."""
    q = os.path.join(SHARED, "stabletoolbench", "solvable_queries", "test_instruction")
    kwargs = dict(api_catalog=os.path.join(SHARED, "derived", "api_docs_from_test_queries.jsonl"),
                  queries=[os.path.join(q, f"{g}.json") for g in ("G1_instruction", "G1_category", "G2_instruction",
                                                                  "G2_category")])
    plain, out = prepare(val_fraction=0, **kwargs), prepare(views=ALL, **kwargs)
    assert out["retrieval_test.json"] == plain["retrieval_test.json"] and len(plain["retrieval_test.json"]) == 113
    val = texts(out["retrieval_val.json"])
    assert val and not val & texts(out["retrieval_training.json"]) and not val & texts(out["retrieval_test.json"])
    counts = out["prepare_report.json"]["views"]
    assert counts["name"]["examples"] == counts["ask"]["examples"] == 2490
    assert counts["multi_tool"]["queries"] > 500 and counts["multi_category"]["queries"] > 500
