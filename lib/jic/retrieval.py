"""Journal-segment retrieval for RAFt (retrieval-augmented fine-tuning) in the JIC pipeline.

RAFt feeds the student the user's last utterance together with the top-k journal segments of the persona's author,
chosen by Maximum Marginal Relevance (Carbonell & Goldstein 1998) so the segments are relevant to the utterance but
not near-duplicates of each other. Vectors come from lib.embed; `mmr` uses cosine similarity, so inputs need not be
normalised. `build_raft_input` renders the model input from a template kept as a parameter (the paper's exact
wording is not published).
"""
from __future__ import annotations

import numpy as np

DEFAULT_RAFT_TEMPLATE = "Journal excerpts:\n{segments}\n\nUser: {utterance}"


def _unit(v: np.ndarray) -> np.ndarray:
    """Row-normalise, rejecting zero vectors (their cosine similarity is undefined)."""
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    if np.any(norms == 0):
        bad = np.nonzero(norms.ravel() == 0)[0].tolist()[:10]
        raise ValueError(f"zero vector(s) cannot be compared by cosine similarity: rows {bad}")
    return v / norms


def mmr(query_vec, doc_vecs, k: int, lambda_: float = 0.5) -> list[int]:
    """Indices of k documents chosen greedily by argmax lambda*sim(q,d) - (1-lambda)*max_{s in S} sim(d,s)."""
    if not 0.0 <= lambda_ <= 1.0:
        raise ValueError(f"lambda_ must be in [0, 1], got {lambda_}")
    D = np.asarray(doc_vecs, dtype=float)
    if D.ndim != 2:
        raise ValueError(f"doc_vecs must be 2-D (n_docs x dim), got shape {D.shape}")
    q = np.asarray(query_vec, dtype=float).ravel()
    if len(D) == 0 or k <= 0:
        return []
    if q.shape[0] != D.shape[1]:
        raise ValueError(f"query has dim {q.shape[0]} but documents have dim {D.shape[1]}")
    D = _unit(D)
    q = _unit(q[None, :])[0]
    relevance = D @ q
    doc_sim = D @ D.T
    k = min(k, len(D))
    selected: list[int] = []
    # Largest similarity of each candidate to anything already selected (0 before the first pick, as in the paper).
    redundancy = np.zeros(len(D))
    candidates = np.ones(len(D), dtype=bool)
    for _ in range(k):
        score = lambda_ * relevance - (1.0 - lambda_) * redundancy
        score[~candidates] = -np.inf
        best = int(np.argmax(score))  # ties: lowest index, so the order is deterministic
        selected.append(best)
        candidates[best] = False
        redundancy = np.maximum(redundancy, doc_sim[best]) if len(selected) > 1 else doc_sim[best].copy()
    return selected


def build_raft_input(utterance: str, segments: list[str], template: str = DEFAULT_RAFT_TEMPLATE,
                     separator: str = "\n") -> str:
    """Render the RAFt model input: the user's last utterance plus the retrieved journal segments."""
    if "{utterance}" not in template or "{segments}" not in template:
        raise ValueError(f"RAFt template must contain {{utterance}} and {{segments}}: {template!r}")
    return template.format(utterance=utterance.strip(), segments=separator.join(s.strip() for s in segments))
