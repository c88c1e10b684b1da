"""Clusters from edges: union-find with a size cap, deterministic whatever the input order.

Nodes are exact-text groups (identical title + body), weighted by how many questions they hold;
they are never cut. Edges are joined strongest first: by kind (KINDS order), then Jaccard
descending, then (a, b). An edge whose join would make a cluster larger than max_cluster questions
is refused (`joined` false in the edges file) and the clusters on both ends are reported capped:
chaining can otherwise join unrelated questions into one huge cluster. A cluster's id is its
smallest question id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Edge kinds, strongest evidence first (the order edges are joined in).
KINDS = ("exact_text", "near_duplicate", "dup_link", "same_answer")


@dataclass
class Clustering:
    cluster: np.ndarray        # per node: its cluster id (the smallest question id in it)
    joined: np.ndarray         # per edge (in the given order): whether it was joined
    capped: list[int]          # cluster ids that refused at least one edge, sorted


def join_order(kind: np.ndarray, jaccard: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Edge indices, strongest first (kind rank, Jaccard descending with NaN last, a, b)."""
    rank = np.array([KINDS.index(k) for k in kind], np.int64)
    j = np.where(np.isnan(jaccard), -1.0, jaccard)
    return np.lexsort((b, a, -j, rank))


def cluster(node_ids: np.ndarray, weights: np.ndarray, a: np.ndarray, b: np.ndarray, order: np.ndarray,
            max_cluster: int) -> Clustering:
    """node_ids: the smallest question id of each node (sorted, unique); weights: its questions;
    a, b: edge ends as node positions; order: the edges in join order."""
    parent = list(range(len(node_ids)))
    size = weights.astype(np.int64).tolist()
    joined = np.zeros(len(a), bool)
    refused: list[int] = []

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    al, bl = a.tolist(), b.tolist()
    for e in order.tolist():
        ra, rb = find(al[e]), find(bl[e])
        if ra == rb:
            joined[e] = True
            continue
        if size[ra] + size[rb] > max_cluster:
            refused.append(e)
            continue
        if ra > rb:                     # the root is the node with the smallest id: ids are sorted
            ra, rb = rb, ra
        parent[rb] = ra
        size[ra] += size[rb]
        joined[e] = True
    roots = np.array([find(x) for x in range(len(node_ids))], np.int64)
    cluster_id = node_ids[roots] if len(node_ids) else node_ids
    capped = sorted({int(cluster_id[x]) for e in refused for x in (al[e], bl[e])})
    return Clustering(cluster_id, joined, capped)
