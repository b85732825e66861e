"""Retrieval and classification metrics: pure functions over ranked lists, tested against hand-computed values.

Relevance is binary. `relevant` is the set of ALL relevant items of a query, including those the system could never
retrieve (e.g. absent from the catalog): they count in the ideal ranking and in recall, so misses cost what they should.
"""

import math


def dcg(ranked, relevant, k):
    return sum(1.0 / math.log2(i + 2) for i, item in enumerate(ranked[:k]) if item in relevant)


def ndcg(ranked, relevant, k):
    """Standard NDCG@k: the ideal ranking puts min(k, |relevant|) relevant items first."""
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return dcg(ranked, relevant, k) / ideal if ideal else 0.0


def ndcg_retrieved_only(ranked, relevant, k):
    """The variant of ToolGen's evaluation script: the ideal ranking is built from the relevance of the retrieved
    top-k only, so relevant items that were not retrieved are ignored. It over-states NDCG@3/@5; reported separately."""
    gains = sorted((1 if item in relevant else 0 for item in ranked[:k]), reverse=True)
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    return dcg(ranked, relevant, k) / ideal if ideal else 0.0


def reciprocal_rank(ranked, relevant):
    return next((1.0 / (i + 1) for i, item in enumerate(ranked) if item in relevant), 0.0)


def recall(ranked, relevant, k):
    return len(set(ranked[:k]) & set(relevant)) / len(relevant) if relevant else 0.0


def mean_ndcg(rankings, relevants, k):
    """Standard NDCG@k averaged over queries (0 for no queries)."""
    return sum(ndcg(r, rel, k) for r, rel in zip(rankings, relevants)) / len(rankings) if rankings else 0.0


def retrieval_metrics(rankings, relevants, ks=(1, 3, 5)):
    """Mean metrics over queries. rankings: ranked item lists; relevants: sets of all relevant items."""
    n = len(rankings)
    if n == 0:
        return {}
    out = {}
    for k in ks:
        out[f"ndcg@{k}"] = mean_ndcg(rankings, relevants, k)
    for k in ks:
        out[f"ndcg@{k}_retrieved_only"] = sum(ndcg_retrieved_only(r, rel, k) for r, rel in zip(rankings, relevants)) / n
    out["mrr"] = sum(reciprocal_rank(r, rel) for r, rel in zip(rankings, relevants)) / n
    out["recall@5"] = sum(recall(r, rel, 5) for r, rel in zip(rankings, relevants)) / n
    out["queries"] = n
    return out


def accuracy(predictions, golds):
    return sum(p == g for p, g in zip(predictions, golds)) / len(golds) if golds else 0.0


def macro_f1(predictions, golds):
    """Macro-averaged F1 over the classes that occur as gold labels (each tool token is a class)."""
    classes = sorted(set(golds))
    if not classes:
        return 0.0
    total = 0.0
    for c in classes:
        tp = sum(p == c and g == c for p, g in zip(predictions, golds))
        fp = sum(p == c and g != c for p, g in zip(predictions, golds))
        fn = sum(p != c and g == c for p, g in zip(predictions, golds))
        total += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return total / len(classes)
