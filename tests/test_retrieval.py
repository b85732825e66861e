"""Hybrid tool ranking (toolgen/retrieval.py): fusion against rankings computed by hand, the prior's handling of tools
without documentation, tuning on a validation split, and the baselines' document views."""

import numpy as np
import pytest

from toolgen import baselines, retrieval
from toolgen.retrieval import Fusion

TOOLS = ["a", "b", "c"]


def ranked(model, prior, fusion):
    return retrieval.rank(retrieval.fuse(np.array([model]), {"bm25": np.array([prior], dtype=np.float32)}, fusion),
                          TOOLS, 3)[0]


def test_rrf_by_hand():
    # model ranks a, b, c (1, 2, 3); the prior ranks b, c, a (1, 2, 3); k = 1, w = 1:
    # a: 1/2 + 1/4 = 0.750   b: 1/3 + 1/2 = 0.833   c: 1/4 + 1/3 = 0.583
    assert ranked([3.0, 2.0, 1.0], [1.0, 3.0, 2.0], Fusion("bm25", "rrf", 1.0, 1.0)) == ["b", "a", "c"]
    # w = 0.25 lets the model win: a: 0.5 + 0.0625 = 0.5625, b: 0.333 + 0.125 = 0.458, c: 0.25 + 0.083 = 0.333
    assert ranked([3.0, 2.0, 1.0], [1.0, 3.0, 2.0], Fusion("bm25", "rrf", 1.0, 0.25)) == ["a", "b", "c"]
    # an undocumented tool (NaN prior) gets no prior term: a: 1/2, b: 1/3 + 1/3 = 0.667, c: 1/4 + 1/2 = 0.75
    assert ranked([3.0, 2.0, 1.0], [np.nan, 1.0, 2.0], Fusion("bm25", "rrf", 1.0, 1.0)) == ["c", "b", "a"]


def test_weighted_by_hand():
    # prior z-scores of [1, 2, 3]: [-1.2247, 0, 1.2247]; model log-probs [0, -1, -2]
    # w = 1: a -1.22, b -1.0, c -0.78 -> c, b, a;  w = 0.5: a -0.61, b -1.0, c -1.39 -> a, b, c
    assert ranked([0.0, -1.0, -2.0], [1.0, 2.0, 3.0], Fusion("bm25", "weighted", 0.0, 1.0)) == ["c", "b", "a"]
    assert ranked([0.0, -1.0, -2.0], [1.0, 2.0, 3.0], Fusion("bm25", "weighted", 0.0, 0.5)) == ["a", "b", "c"]
    assert ranked([0.0, -1.0, -2.0], [9.0, 9.0, 9.0], Fusion("none")) == ["a", "b", "c"]


def test_tune_picks_the_prior_only_when_it_helps_on_validation():
    model = np.array([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0]])
    prior = {"bm25": np.array([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]], dtype=np.float32),
             "dense": np.array([[5.0, 0.0, 1.0], [5.0, 0.0, 1.0]], dtype=np.float32)}
    fusion, score, table = retrieval.tune(model, prior, [{"b"}, {"b"}], TOOLS, kinds=("none", "bm25", "dense"))
    assert fusion.prior == "bm25" and score == pytest.approx(1.0)      # only BM25 puts b first
    fusion, score, _ = retrieval.tune(model, prior, [{"a"}, {"a"}], TOOLS, kinds=("none", "bm25", "dense"))
    assert fusion == Fusion("none") and score == pytest.approx(1.0)    # the model alone is right: no prior
    assert len(table) == 1 + 2 * (4 * 4 + 5)


def test_prior_scores_every_documented_candidate_and_counts_the_rest():
    documents = {"<<w&&now>>": "Tool: Weather\nAPI: now\nAPI description: current temperature and wind",
                 "<<s&&quote>>": "Tool: Stocks\nAPI: quote\nAPI description: price of a ticker"}
    candidates = ["<<s&&quote>>", "<<x&&distractor>>", "<<w&&now>>"]
    prior = retrieval.Prior("bm25", documents, candidates).compute({"q": ["temperature and wind today"]})
    scores = prior.scores_of("q")["bm25"][0]
    assert prior.undocumented == 1 and np.isnan(scores[1]) and scores[2] > scores[0]


def test_document_views_keep_the_lines_they_name():
    doc = ("Tool: Weather\nTool description: all about skies\nAPI: now\nAPI description: current temperature\n"
           "Required parameters: city (string): the city\nOptional parameters: none")
    assert baselines.doc_text(doc, "full") == doc
    assert baselines.doc_text(doc, "name_api") == "Tool: Weather\nAPI: now\nAPI description: current temperature"
    assert "all about skies" not in baselines.doc_text(doc, "no_tool_description")
    assert baselines.doc_text(doc, "name_api_params").endswith("Required parameters: city (string): the city")
