"""lib/jic/cluster.py: silhouette-chosen k, dominant cluster with ties, per-author filtering."""
import numpy as np
import pytest

from lib.jic.cluster import choose_k, cluster_authors, dominant_cluster

OFFSETS = np.array([[0, 0], [0.1, 0], [0, 0.1], [-0.1, 0], [0, -0.1], [0.1, 0.1], [-0.1, -0.1]])


def blobs(sizes, centers=((0, 0), (10, 0), (0, 10))):
    """Tight, well separated 2-D blobs of the given sizes."""
    return np.vstack([np.asarray(c) + OFFSETS[:s] for s, c in zip(sizes, centers)])


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_choose_k_finds_three_blobs(method):
    k, scores = choose_k(blobs((5, 5, 5)), method=method)
    assert k == 3
    assert sorted(scores) == list(range(2, 11))
    assert scores[3] == max(scores.values()) and scores[3] > 0.9


def test_choose_k_caps_and_small_inputs():
    X = blobs((2, 2), centers=((0, 0), (10, 0)))
    assert sorted(choose_k(X)[1]) == [2, 3]  # k_max capped at n - 1
    assert choose_k(X[:2]) == (1, {})
    assert choose_k(np.zeros((6, 2))) == (1, {})  # identical points: nothing to cluster
    with pytest.raises(ValueError, match="unknown clustering method"):
        choose_k(X, method="dbscan")


def test_dominant_cluster_largest_and_ties():
    labels, dom = dominant_cluster(blobs((3, 5), centers=((0, 0), (10, 0))), 2)
    assert (labels == dom).sum() == 5 and set(np.nonzero(labels == dom)[0]) == {3, 4, 5, 6, 7}
    labels, dom = dominant_cluster(blobs((4, 4), centers=((0, 0), (10, 0))), 2)
    assert np.bincount(labels).tolist() == [4, 4] and dom == 0  # tie -> lowest label
    labels, dom = dominant_cluster(blobs((4,)), 1)
    assert labels.tolist() == [0, 0, 0, 0] and dom == 0


def test_cluster_authors_keeps_dominant_cluster_and_small_authors():
    Xa = blobs((7, 4, 4))
    Xb = np.array([[5.0, 5.0], [6.0, 6.0]])
    records = [{"id": f"a{i}", "author": "a"} for i in range(15)] + [{"id": f"b{i}", "author": "b"} for i in range(2)]
    kept, table = cluster_authors(records, np.vstack([Xa, Xb]), min_entries=3, seed=0)
    assert [r["id"] for r in kept] == [f"a{i}" for i in range(7)] + ["b0", "b1"]
    assert table[0]["author"] == "a" and table[0]["k"] == 3 and table[0]["n_kept"] == 7
    assert table[0]["silhouette"] > 0.9
    assert table[1] == {"author": "b", "n_entries": 2, "k": 1, "silhouette": None, "n_kept": 2,
                        "reason": "fewer than 3 entries; all kept"}
    again, table2 = cluster_authors(records, np.vstack([Xa, Xb]), min_entries=3, seed=0)
    assert again == kept and table2 == table


def test_cluster_authors_rejects_bad_input():
    with pytest.raises(ValueError, match="2 records but 3 embedding rows"):
        cluster_authors([{"author": "a"}, {"author": "a"}], np.zeros((3, 2)))
    with pytest.raises(ValueError, match="'r1' has no 'author'"):
        cluster_authors([{"id": "r1"}], np.zeros((1, 2)))
