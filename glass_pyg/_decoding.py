r"""The stored entries of a plan and the assignment steps that the decoders of
:mod:`glass_pyg.metrics` share (dense assignment, every row's cheapest entry, greedy)."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .ot.plan import TransportPlan

PlanLike = TransportPlan | Tensor


def _coo(plan: PlanLike) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """``(rows, cols, values, n, m)`` of the stored entries, detached."""
    if isinstance(plan, TransportPlan):
        plan = plan.averaged()
    if not isinstance(plan, Tensor) or plan.dim() != 2:
        raise ValueError(f"plan must be a TransportPlan or an (n, m) tensor, got "
                         f"{tuple(plan.shape) if isinstance(plan, Tensor) else type(plan).__name__}")
    plan = plan.detach()
    n, m = plan.shape
    if plan.is_sparse:
        plan = plan.coalesce()
        (rows, cols), vals = plan.indices(), plan.values()
    else:
        rows, cols = (plan != 0).nonzero(as_tuple=True)
        vals = plan[rows, cols]
    return rows, cols, vals, n, m


def top_per_row(rows: Tensor, cols: Tensor, vals: Tensor, n: int, k: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""The ``k`` largest of the entries ``(rows, cols, vals)`` in every row (ties in any order)."""
    order = torch.argsort(vals, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]  # by row, largest first within a row
    rows, cols, vals = rows[order], cols[order], vals[order]
    count = torch.bincount(rows, minlength=n)
    first = torch.cumsum(count, 0) - count
    keep = torch.arange(rows.numel(), device=rows.device) - first[rows] < k
    return rows[keep], cols[keep], vals[keep]


def _shape(plan: PlanLike) -> tuple[int, int]:
    """``(n, m)`` of a plan (a slice-averaged :class:`TransportPlan` or an ``(n, m)`` tensor)."""
    if isinstance(plan, TransportPlan):
        return plan.num_sources, plan.num_targets
    if not isinstance(plan, Tensor) or plan.dim() != 2:
        raise ValueError(f"plan must be a TransportPlan or an (n, m) tensor, got "
                         f"{tuple(plan.shape) if isinstance(plan, Tensor) else type(plan).__name__}")
    return tuple(plan.shape)


def _is_dense(plan: PlanLike) -> bool:
    return isinstance(plan, Tensor) and plan.dim() == 2 and plan.layout == torch.strided


def _assign_dense(w: np.ndarray, inside: np.ndarray, rows_checked: bool = False) -> tuple[np.ndarray, int]:
    r"""Minimum-cost matching for the positive costs ``w`` ``(n, m)`` on the pairs ``inside``;
    a pair outside costs more than any matching inside, so as few as possible are used.
    Returns the ``(n,)`` matching and how many of its pairs lie outside. Every row's cheapest
    inside entry, when those columns are all different, is the answer without the solver
    (not looked for again when ``rows_checked``: :func:`_row_minima_matching` did)."""
    n, m = w.shape
    if n <= m and n and not rows_checked:
        best = np.where(inside, w, np.inf).argmin(1)
        if inside[np.arange(n), best].all() and np.unique(best).size == n:
            return best.astype(np.int64), 0
    penalty = (w[inside].max() if inside.any() else 1.0) * (min(n, m) + 1)
    row_ind, col_ind = linear_sum_assignment(np.where(inside, w, penalty))
    match = np.full(n, -1, dtype=np.int64)
    match[row_ind] = col_ind
    return match, int((~inside[row_ind, col_ind]).sum())


def _row_minima_matching(r: np.ndarray, c: np.ndarray, w: np.ndarray, n: int, m: int) -> np.ndarray | None:
    r"""Every row's cheapest entry, when those columns are all different (and ``n <= m``):
    then no matching costs less, since each row pays its minimum. None otherwise. This is
    the common case when decoding a confident plan or neighbourhood votes, and it skips
    the assignment solver. Entries sorted by row (coalesced) only; None otherwise."""
    if n > m or r.size < n or (r.size > 1 and bool((r[1:] < r[:-1]).any())):
        return None
    first = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    if first.size != n:  # a row without entries
        return None
    mins = np.minimum.reduceat(w, first)
    at_min = np.flatnonzero(w == np.repeat(mins, np.diff(np.r_[first, r.size])))
    pick = at_min[np.r_[True, r[at_min][1:] != r[at_min][:-1]]]  # first cheapest entry per row
    match = c[pick].astype(np.int64)
    if np.unique(match).size != n:
        return None
    return match


def _greedy(r: np.ndarray, c: np.ndarray, score: np.ndarray, n: int, m: int) -> np.ndarray:
    """Greedy matching of the entries ``(r, c)`` by decreasing ``score`` (ties in row-major order)."""
    order = np.lexsort((c, r, -score))
    match = np.full(n, -1, dtype=np.int64)
    used = np.zeros(m, dtype=bool)
    left = min(n, m, np.unique(r).size, np.unique(c).size)  # pairs a matching can hold at most
    for i, j in zip(r[order].tolist(), c[order].tolist()):
        if match[i] < 0 and not used[j]:
            match[i] = j
            used[j] = True
            left -= 1
            if left == 0:
                break
    return match
