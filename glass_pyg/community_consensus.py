r"""Consensus on large graphs: match one pair of communities, then let the refinement carry it.

The GW consensus descent forms the ``n x m`` plan and dense products of
:math:`O(n^3)` per step. Graphs with
community structure give a smaller problem that carries the same information:

1. each graph is split into communities by the leading eigenvectors of its
   adjacency (those above the random bulk, whose edge is about
   :math:`2\sqrt{\bar d\,(1-\delta)}` for mean degree :math:`\bar d` and density
   :math:`\delta`), clustered by k-means on the normalised rows;
2. the descent (:func:`~glass_pyg.consensus.gw_consensus`) runs on the induced
   subgraphs of one source community and a target community of similar size
   and density; communities of equal statistics cannot be told apart by
   their sizes, so the target candidates are tried in turn until one aligns;
3. that partial matching seeds the neighbourhood refinement on the whole
   graphs (:func:`~glass_pyg.refinement.refine_matching`): a node outside the
   community collects one vote per neighbour inside it, which is enough once
   the community is a few percent of the graph.

Graphs without communities (no eigenvalue clears the bulk) return ``None`` and
the caller aligns the whole graphs.
"""
from __future__ import annotations

import math
import time
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scipy.cluster.vq import kmeans2
from scipy.sparse.linalg import ArpackNoConvergence, eigsh
from torch import Tensor

from .consensus import ConsensusMatching, gw_consensus, preserved_edges
from .refinement import _adjacency, refine_matching

__all__ = ["spectral_communities", "community_consensus"]

_BULK_MARGIN = 1.25  # eigenvalues above this multiple of the bulk edge are community signal
_KMEANS_STARTS = 4
_PATIENCE = 4  # stale steps that end a community pair's descent


def spectral_communities(adjacency: sp.spmatrix, max_parts: int = 8, seed: int = 0) -> np.ndarray:
    r"""Community labels of a graph from the eigenvectors of its adjacency above the random bulk.

    Args:
        adjacency: ``(n, n)`` symmetric 0/1 scipy sparse matrix.
        max_parts: communities at most (eigenpairs computed).
        seed: of the eigensolver's start vector and of k-means.

    Returns:
        ``(n,)`` int64 labels ``0 .. k-1``, the number of communities ``k`` being
        the number of eigenvalues above :math:`1.25 \times 2\sqrt{\bar d(1-\delta)}`;
        all zeros when fewer than two clear it (no community structure).

    Example:
        >>> import numpy as np
        >>> from glass_pyg.community_consensus import spectral_communities
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> from torch_geometric.utils import to_scipy_sparse_matrix
        >>> pair = SBMPairDataset(n=300, blocks=3, seed=0)[0]
        >>> labels = spectral_communities(to_scipy_sparse_matrix(pair.edge_index_s, num_nodes=300).tocsr())
        >>> sorted(np.bincount(labels).tolist())
        [100, 100, 100]
    """
    if not isinstance(max_parts, int) or isinstance(max_parts, bool) or max_parts < 2:
        raise ValueError(f"max_parts must be an integer >= 2, got {max_parts!r}")
    n = adjacency.shape[0]
    none = np.zeros(n, dtype=np.int64)
    k = min(max_parts, n - 2)
    if k < 2 or adjacency.nnz == 0:
        return none
    rng = np.random.default_rng(seed)
    a = sp.csr_matrix(adjacency, dtype=np.float64)
    try:
        vals, vecs = eigsh(a, k=k, which="LA", v0=rng.standard_normal(n), tol=1e-6)
    except ArpackNoConvergence:  # no clear leading eigenvalues: treated as no structure
        return none
    degree = a.nnz / n
    bulk = 2.0 * math.sqrt(degree * max(1.0 - degree / max(n - 1, 1), 0.0))
    keep = vals > _BULK_MARGIN * bulk
    parts = int(keep.sum())
    if parts < 2:
        return none
    x = vecs[:, keep]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    best = None
    for _ in range(_KMEANS_STARTS):
        with warnings.catch_warnings():  # an empty cluster is dropped below
            warnings.simplefilter("ignore", UserWarning)
            centres, labels = kmeans2(x, parts, minit="++", seed=rng)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels)
    _, labels = np.unique(best[1], return_inverse=True)  # empty clusters dropped
    return labels.astype(np.int64)


def _induced(a: sp.csr_matrix, nodes: np.ndarray) -> Tensor:
    """Edge index of the subgraph induced on ``nodes``, relabelled ``0 .. len(nodes) - 1``."""
    sub = a[nodes][:, nodes].tocoo()
    return torch.from_numpy(np.vstack([sub.row, sub.col]).astype(np.int64))


def _density(edges: Tensor, k: int) -> float:
    """Edge density of a subgraph on ``k`` nodes from its (both-direction) edge index."""
    return edges.size(1) / max(k * (k - 1), 1)


def community_consensus(edge_index_s: Tensor, edge_index_t: Tensor, num_nodes: tuple[int, int], *,
                        max_parts: int = 8, seed: int = 0, refine_rounds: int = 20,
                        **descent) -> ConsensusMatching | None:
    r"""Match two large graphs through one matched pair of their spectral communities.

    Args:
        edge_index_s: ``[2, E_s]`` source edges; edge_index_t: ``[2, E_t]``
            target edges (made undirected, unweighted).
        num_nodes: ``(n, m)``.
        max_parts: communities per graph at most.
        seed: of the spectral split and of the descents.
        refine_rounds: voting rounds of each refinement.
        **descent: passed to :func:`~glass_pyg.consensus.gw_consensus` for the
            communities (``epsilon``, ``patience``, ``dtype``, ``split_above``, ...);
            ``restarts`` is capped at 1 per community pair (a wrong pair never
            localises: the next candidate is the better restart).

    Returns:
        :class:`~glass_pyg.consensus.ConsensusMatching` whose ``plan`` is a sparse
        ``(n, m)`` tensor holding the communities' plan (its 16 largest entries
        per row), ``history`` the fraction of the communities' edges kept by each
        community pair tried, ``parts`` the communities found; ``None`` when
        either graph shows no community structure.

    Example:
        >>> from glass_pyg.community_consensus import community_consensus
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(root=None, n=600, blocks=3, p_in=0.15, p_out=0.02, rewire_prob=0.1, seed=0)[0]
        >>> res = community_consensus(pair.edge_index_s, pair.edge_index_t, (600, 600))
        >>> res.parts, float((res.perm == pair.y[1]).double().mean()) > 0.99
        ((3, 3), True)
    """
    n, m = num_nodes
    t0 = time.perf_counter()
    a_s, a_t = _adjacency(edge_index_s, n, "edge_index_s"), _adjacency(edge_index_t, m, "edge_index_t")
    ls, lt = spectral_communities(a_s, max_parts, seed), spectral_communities(a_t, max_parts, seed)
    if ls.max() == 0 or lt.max() == 0:
        return None
    # the source community: the largest whose plan with a same-sized target community fits the limit
    limit = descent.get("split_above") or n * m
    sizes = np.bincount(ls)
    fits = [c for c in np.argsort(-sizes) if sizes[c] ** 2 <= limit]
    src_label = fits[0] if fits else int(np.argmin(sizes))
    src = np.nonzero(ls == src_label)[0]
    sub_es = _induced(a_s, src)
    dens = _density(sub_es, src.size)
    targets = [(t, _induced(a_t, t)) for t in (np.nonzero(lt == c)[0] for c in range(int(lt.max()) + 1))]
    targets.sort(key=lambda te: abs(math.log(te[0].size / src.size))
                 + abs(math.log(max(_density(te[1], te[0].size), 1e-12) / max(dens, 1e-12))))
    # a wrong community pair never localises: one descent per epsilon, stopped after a few stale steps,
    # before the next candidate; its refinement is the whole graphs' (the communities' would repeat it)
    descent["restarts"] = min(int(descent.get("restarts", 1)), 1)
    descent["patience"] = min(int(descent.get("patience", _PATIENCE)), _PATIENCE)
    tried: list[tuple[ConsensusMatching, np.ndarray]] = []
    steps = 0
    for tgt, sub_et in targets:
        if sub_et.size(1) == 0 or sub_es.size(1) == 0:
            continue
        sub = gw_consensus(sub_es, sub_et, (src.size, tgt.size), seed=seed, refine_rounds=1, **descent)
        steps += sub.iterations
        tried.append((sub, tgt))
        if sub.localised:
            break
    if not tried:
        return None
    # the localised pair, else the pair whose matching kept most of the communities' edges
    sub, tgt = max(tried, key=lambda st: (st[0].localised, st[0].preserved))
    seeds = torch.full((n,), -1, dtype=torch.long)
    ok = sub.perm >= 0
    seeds[torch.from_numpy(src)[ok]] = torch.from_numpy(tgt)[sub.perm[ok]]
    perm = refine_matching(seeds, edge_index_s, edge_index_t, num_nodes=(n, m), max_rounds=refine_rounds).perm
    score = preserved_edges(perm, edge_index_s, edge_index_t, m)
    history = [s.preserved for s, _ in tried]
    plan = sub.plan
    vals, cols = plan.topk(min(16, plan.size(1)), dim=1)
    rows = torch.arange(plan.size(0)).unsqueeze(1).expand_as(cols)
    idx = torch.stack([torch.from_numpy(src)[rows.reshape(-1)], torch.from_numpy(tgt)[cols.reshape(-1)]])
    sparse = torch.sparse_coo_tensor(idx, vals.reshape(-1), (n, m), check_invariants=False).coalesce()
    return ConsensusMatching(perm=perm, plan=sparse, iterations=steps, preserved=score, history=tuple(history),
                             marginal_error=sub.marginal_error, seconds=time.perf_counter() - t0,
                             localised=sub.localised, parts=(int(ls.max()) + 1, int(lt.max()) + 1))
