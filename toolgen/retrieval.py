"""Hybrid tool ranking: the model's log-probabilities over the tool tokens, fused with a retriever prior over the tools'
documentation (BM25, dense, or both).

Generation alone learns the query styles it was shown; retrievers match words and meaning. On queries unlike its
training queries each is wrong on different queries, so their fusion beats both. Two fusions, per query and tool t:

    rrf:       score(t) = 1 / (k + rank_model(t)) + w * sum_p 1 / (k + rank_p(t))
    weighted:  score(t) = log p_model(t) + w * sum_p z_p(t)

rank_x(t) counts from 1 (1 = best); z_p is the prior's score standardised per query over the documented tools (mean 0,
standard deviation 1). A tool without documentation (a distractor name, say) gets no prior term. The prior kind, the
fusion, k and w are chosen on the validation split (`tune`), never on test, and recorded with the results.
"""

import dataclasses
import itertools
import time

import numpy as np
import torch

from toolgen import baselines, metrics

PRIORS = ("none", "bm25", "dense", "bm25+dense")
FUSIONS = ("rrf", "weighted")
# The grid that `tune` searches. Small on purpose: a validation split of a few dozen queries cannot pick among more.
GRID = {"rrf": {"k": (5.0, 10.0, 20.0, 60.0), "w": (0.25, 0.5, 1.0, 2.0)},
        "weighted": {"k": (0.0,), "w": (0.1, 0.25, 0.5, 1.0, 2.0)}}


@dataclasses.dataclass(frozen=True)
class Fusion:
    prior: str = "none"
    fusion: str = "rrf"
    k: float = 10.0
    w: float = 1.0


class Prior:
    """Retriever scores of every candidate tool: [queries x candidates], NaN where a candidate has no documentation.

    documents: {tool token: documentation}; candidates: the tool tokens in the model's order; views: {retriever: the
    documentation view it indexes (baselines.DOC_VIEWS)}, chosen per retriever on the validation split."""

    def __init__(self, kind, documents, candidates, views=None):
        self.kinds = [] if kind == "none" else kind.split("+")
        self.candidates = list(candidates)
        columns = [i for i, t in enumerate(self.candidates) if (documents.get(t) or "").strip()]
        documented = [self.candidates[i] for i in columns]
        self.columns = np.array(columns, dtype=np.int64)
        self.undocumented = len(self.candidates) - len(documented)
        views = views or {}
        self.indexes = {k: baselines.INDEXES[k]([baselines.doc_text(documents[t], views.get(k, "full"))
                                                 for t in documented]) for k in self.kinds}

    def compute(self, named_queries):
        """Scores of each named query set, computed once and kept (every model's hybrid row reuses them), with the
        seconds each took (a hybrid row's queries/s counts them)."""
        self.by_name, self.seconds = {}, {}
        for name, queries in named_queries.items():
            t0 = time.time()
            self.by_name[name] = self.scores(queries)
            self.seconds[name] = time.time() - t0
        return self

    def scores_of(self, name):
        return self.by_name[name]

    def scores(self, queries):
        """{retriever: [queries x candidates] float32, NaN for undocumented candidates}."""
        out = {}
        for kind, index in self.indexes.items():
            full = np.full((len(queries), len(self.candidates)), np.nan, dtype=np.float32)
            full[:, self.columns] = index.scores(queries)
            out[kind] = full
        return out


def _ranks(scores):
    """1-based rank of each column per row (1 = highest); NaN columns get rank inf (no contribution)."""
    filled = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-filled, axis=1, kind="stable")
    ranks = np.empty_like(order, dtype=np.float64)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1, dtype=np.float64)[None, :].repeat(len(order), 0),
                      axis=1)
    return np.where(np.isnan(scores), np.inf, ranks)


def _standardised(scores):
    mean = np.nanmean(scores, axis=1, keepdims=True)
    std = np.nanstd(scores, axis=1, keepdims=True)
    z = (scores - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(z, nan=0.0)


def fuse(model_scores, prior_scores, fusion):
    """model_scores: [queries x candidates] (log-probabilities); prior_scores: {retriever: same shape} -> fused scores.
    Retrievers not named by fusion.prior are ignored; prior "none" returns the model's scores."""
    model = np.asarray(model_scores.float() if isinstance(model_scores, torch.Tensor) else model_scores, np.float64)
    kinds = [] if fusion.prior == "none" else fusion.prior.split("+")
    if not kinds:
        return model
    if fusion.fusion == "rrf":
        fused = 1.0 / (fusion.k + _ranks(model))
        for kind in kinds:
            fused = fused + fusion.w / (fusion.k + _ranks(prior_scores[kind]))
        return fused
    fused = model.copy()
    for kind in kinds:
        fused = fused + fusion.w * _standardised(prior_scores[kind])
    return fused


def rank(fused, candidates, k):
    return baselines.top_k(np.asarray(fused), list(candidates), k)


def tune(model_scores, prior_scores, relevant, candidates, kinds=PRIORS, at=5):
    """The fusion with the best mean NDCG@at on the validation rows -> (Fusion, its NDCG, the table of every try).
    Ties keep the earlier setting of the grid (prior none first: a prior must earn its place)."""
    best, best_score, table = None, -1.0, []
    for prior in kinds:
        settings = [Fusion(prior="none")] if prior == "none" else [
            Fusion(prior, fusion, k, w) for fusion in FUSIONS
            for k, w in itertools.product(GRID[fusion]["k"], GRID[fusion]["w"])]
        for setting in settings:
            ranked = rank(fuse(model_scores, prior_scores, setting), candidates, at)
            score = metrics.mean_ndcg(ranked, relevant, at)
            table.append((setting, score))
            if score > best_score + 1e-12:
                best, best_score = setting, score
    return best, best_score, table


def agent_scorer(prior, fusion, finish):
    """A tool_scorer for toolgen.agent: the prior (from the request, and the thought when there is one) re-ranks the
    tools by `fusion`; whether to finish stays the model's call (a prior knows tools, not when a task is done)."""
    column = {t: i for i, t in enumerate(prior.candidates)}

    def score(request, thought, candidates, logprobs):
        model = logprobs.float().numpy()
        at = np.array([column.get(t, -1) for t in candidates])
        raw = prior.scores([f"{request} {thought}" if thought else request])
        aligned = {k: np.where(at >= 0, v[0, np.clip(at, 0, None)], np.nan)[None] for k, v in raw.items()}
        fused = fuse(model[None], aligned, fusion)[0]
        stop = candidates.index(finish)
        fused[stop] = fused.max() + 1.0 if model.argmax() == stop else -np.inf
        return torch.from_numpy(fused)
    return score
