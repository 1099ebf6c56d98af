r"""Exact minimum-cost assignment on a sparse set of candidate pairs, that cannot be infeasible.

Sparse Jonker-Volgenant solvers are fast on candidate sets that admit a
perfect matching and can search for a very long time on those that do not
(benchmarks/RESULTS.md, design measurements). So the candidates are always completed by *escape pairs*: a
full matching (row ``i`` to column ``i``) at a cost above that of any matching
of the candidates alone. The optimum then uses as few escape pairs as possible, none when the
candidates admit a full matching. Square problems go to LAPMOD
(the ``lap`` package), rectangular ones to scipy's
:func:`~scipy.sparse.csgraph.min_weight_full_bipartite_matching`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import min_weight_full_bipartite_matching


def sparse_assignment(rows: np.ndarray, cols: np.ndarray, cost: np.ndarray, n: int, m: int) -> tuple[np.ndarray, int]:
    r"""Minimum total cost matching of ``min(n, m)`` pairs among the candidates ``(rows, cols, cost)``.

    Returns the ``(n,)`` column of every row (``-1`` for rows left unmatched
    when ``n > m``) and how many of its pairs are escape pairs (outside the
    candidates). Duplicate candidates keep their lowest cost.
    """
    rows, cols = np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    if not (rows.shape == cols.shape == cost.shape and rows.ndim == 1):
        raise ValueError(f"rows, cols and cost must be 1-D of one length, got {rows.shape}, {cols.shape}, {cost.shape}")
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= m):
        raise ValueError(f"candidate indices outside the ({n}, {m}) problem")
    if not np.isfinite(cost).all():
        raise ValueError("candidate costs must be finite")
    er = np.arange(min(n, m), dtype=np.int64)
    escape = er
    shift = cost.min() if cost.size else 0.0
    base = cost - shift + 1.0  # >= 1: no explicit zeros in the sparse graph
    penalty = (base.max() if base.size else 1.0) * (min(n, m) + 1)
    r_all = np.concatenate([rows, er])
    c_all = np.concatenate([cols, escape[er]])
    w_all = np.concatenate([base, np.full(er.size, penalty)])
    key = r_all * m + c_all
    order = np.lexsort((w_all, key))  # by pair, cheapest first
    key, w_all = key[order], w_all[order]
    first = np.ones(key.size, dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, w_all = key[first], w_all[first]
    r_u, c_u = key // m, key % m
    if n == m:
        import lap
        starts = np.concatenate([[0], np.cumsum(np.bincount(r_u, minlength=n))])
        _, match, _ = lap.lapmod(n, w_all, starts, c_u)
        match = np.asarray(match, dtype=np.int64)
    else:
        graph = sp.csr_matrix((w_all, (r_u, c_u)), shape=(n, m))
        row_ind, col_ind = min_weight_full_bipartite_matching(graph)
        match = np.full(n, -1, dtype=np.int64)
        match[row_ind] = col_ind
    ok = match >= 0
    outside = int((~np.isin(np.flatnonzero(ok) * m + match[ok], rows * m + cols)).sum())
    return match, outside
