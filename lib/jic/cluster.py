"""Per-author clustering of journal-entry embeddings (JIC step: keep each author's dominant cluster).

The JIC paper embeds every entry of an author, clusters them with K-Means or agglomerative clustering, picks k in
2..10 by the silhouette score, and keeps only the largest cluster, so the entries used as the author's persona talk
about one consistent side of them. `cluster_authors` does that for all authors and returns a per-author table for the
notebook. Everything is deterministic given `seed` (K-Means uses it; Ward agglomerative needs none).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

METHODS = ("kmeans", "agglomerative")


def _labels(X: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    """Cluster X into k groups with the chosen method."""
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    if method == "agglomerative":
        return AgglomerativeClustering(n_clusters=k, linkage="ward").fit_predict(X)
    raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")


def choose_k(X: np.ndarray, k_min: int = 2, k_max: int = 10, method: str = "kmeans",
             seed: int = 0) -> tuple[int, dict[int, float]]:
    """Pick k with the highest silhouette in [k_min, min(k_max, n-1)]; (1, {}) when X is not clusterable."""
    X = np.asarray(X, dtype=float)
    if method not in METHODS:
        raise ValueError(f"unknown clustering method {method!r}; expected one of {METHODS}")
    if k_min < 2:
        raise ValueError(f"k_min must be >= 2 (silhouette is undefined for k=1), got {k_min}")
    from sklearn.metrics import silhouette_score

    n = len(X)
    if n < 3:
        return 1, {}
    # Duplicate entries (e.g. reposts) cap k at the number of distinct points; all-identical X has no clusters.
    n_distinct = len(np.unique(X, axis=0))
    if n_distinct < 2:
        return 1, {}
    scores: dict[int, float] = {}
    for k in range(k_min, min(k_max, n - 1, n_distinct) + 1):
        labels = _labels(X, k, method, seed)
        # Silhouette needs 2..n-1 distinct labels; a k whose clusters collapsed anyway is skipped.
        if not 2 <= len(np.unique(labels)) <= n - 1:
            continue
        scores[k] = float(silhouette_score(X, labels))
    if not scores:
        return 1, {}
    best = max(scores.values())
    return min(k for k, s in scores.items() if s == best), scores


def dominant_cluster(X: np.ndarray, k: int, method: str = "kmeans", seed: int = 0) -> tuple[np.ndarray, int]:
    """Cluster X into k groups and name the largest one (ties go to the lowest label)."""
    X = np.asarray(X, dtype=float)
    if k <= 1:
        return np.zeros(len(X), dtype=int), 0
    labels = _labels(X, k, method, seed)
    counts = np.bincount(labels)
    return labels, int(np.argmax(counts))  # argmax returns the first (lowest) label among ties


def cluster_authors(records: list[dict], X: np.ndarray, k_min: int = 2, k_max: int = 10, method: str = "kmeans",
                    min_entries: int = 3, seed: int = 0, author_key: str = "author") -> tuple[list[dict], list[dict]]:
    """Keep each author's dominant-cluster entries; return (kept records, per-author table for the notebook)."""
    X = np.asarray(X, dtype=float)
    if len(records) != len(X):
        raise ValueError(f"cluster_authors: {len(records)} records but {len(X)} embedding rows")
    by_author: dict[str, list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        if author_key not in rec:
            raise ValueError(f"record {rec.get('id', i)!r} has no {author_key!r} field")
        by_author[rec[author_key]].append(i)

    kept_idx: list[int] = []
    table: list[dict] = []
    for author in sorted(by_author, key=str):
        idx = by_author[author]
        row = {"author": author, "n_entries": len(idx), "k": 1, "silhouette": None, "n_kept": len(idx), "reason": ""}
        if len(idx) < max(min_entries, 3):
            # Too few entries to cluster meaningfully: keep them all and say why.
            row["reason"] = f"fewer than {max(min_entries, 3)} entries; all kept"
            kept_idx.extend(idx)
        else:
            k, scores = choose_k(X[idx], k_min, k_max, method, seed)
            if k == 1:
                row["reason"] = "not clusterable (identical embeddings); all kept"
                kept_idx.extend(idx)
            else:
                labels, dom = dominant_cluster(X[idx], k, method, seed)
                chosen = [i for i, lab in zip(idx, labels) if lab == dom]
                row.update(k=k, silhouette=scores[k], n_kept=len(chosen))
                kept_idx.extend(chosen)
        table.append(row)
    kept_idx.sort()  # keep the input order of records
    return [records[i] for i in kept_idx], table
