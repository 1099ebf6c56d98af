r"""Decoding a soft plan into correspondences, and the metrics of a matching.

A plan may be given as a :class:`~glass_pyg.ot.TransportPlan` (its slices are
averaged), a sparse ``(n, m)`` tensor or a dense ``(n, m)`` tensor. Ground
truth ``y`` is a ``[2, M]`` index of pairs (source, target) or an ``(n,)``
tensor holding the target of every source.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ._decoding import (
    PlanLike,
    _assign_dense,
    _coo,
    _greedy,
    _is_dense,
    _row_minima_matching,
    _shape,
    top_per_row,
)
from ._limits import DENSE_PAIRS
from .assignment import sparse_assignment
from .ot.plan import TransportPlan

__all__ = ["DecodingWarning", "to_permutation", "greedy_matching", "row_argmax", "matching_accuracy", "perm_accuracy",
           "hits_at_k", "plan_entropy"]

_DENSE_LIMIT = DENSE_PAIRS  # n * m up to which the dense assignment solver is used (robust to ties)
_SPARSE_CANDIDATES = 32  # plan entries per row the sparse assignment considers by default


class DecodingWarning(UserWarning):
    """The plan's support had no full matching; some pairs were matched outside it.

    Example:
        >>> import warnings, torch
        >>> from glass_pyg.metrics import DecodingWarning, to_permutation
        >>> plan = torch.tensor([[0.5, 0.0], [0.5, 0.0]]).to_sparse()          # both rows want column 0
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     perm = to_permutation(plan)
        >>> sorted(perm.tolist()), any(issubclass(w.category, DecodingWarning) for w in caught)
        ([0, 1], True)
    """


def _truth(y: Tensor, n: int | None = None, m: int | None = None) -> tuple[Tensor, Tensor]:
    """``y`` as (sources, targets), checked against ``n`` sources and ``m`` targets when known."""
    if y.dim() == 1:
        src, dst = torch.arange(y.numel(), device=y.device), y
    elif y.dim() != 2 or y.size(0) != 2:
        raise ValueError(f"y must be a [2, M] index of pairs or an (n,) permutation, got {tuple(y.shape)}")
    else:
        src, dst = y[0], y[1]
    if y.is_floating_point():
        raise ValueError(f"y must hold integer node indices, got dtype {y.dtype}")
    if src.numel():
        for name, idx, size in (("source", src, n), ("target", dst, m)):
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or (size is not None and hi >= size):
                raise ValueError(f"y holds {name} indices in [{lo}, {hi}], outside [0, "
                                 f"{size if size is not None else 'inf'})")
    return src, dst


def to_permutation(plan: PlanLike, cost: Callable[[Tensor, Tensor], Tensor] | None = None,
                   candidates: int | None = None, assignment: str | None = None) -> Tensor:
    r"""A one-to-one matching inside the plan's support, ``(n,)`` target per source (``-1`` if none).

    Without ``cost`` it maximises the matched plan weight :math:`\sum P_{i\pi(i)}`;
    with ``cost`` (a callable on index pairs, e.g. the lifted cost) it finds the
    minimum-cost matching among the plan's candidates, so the coupling acts as a
    candidate set refined by the geometry. ``candidates`` keeps, per row, that
    many of the plan's stored entries: the largest, or with ``cost`` the
    cheapest (default: all of them while ``n * m <= 2**22``, 32 beyond). When
    every row's best entry is in a different column that is the answer.
    Otherwise ``assignment`` says how: ``"optimal"`` solves it exactly, with
    scipy's dense ``linear_sum_assignment`` while ``n * m <= 2**22`` (robust to
    the exact ties of structurally equivalent nodes; a dense plan is decoded as
    a matrix) and beyond that with :func:`~glass_pyg.assignment.sparse_assignment`
    (exact LAPMOD on the candidates, which cannot stall where scipy's sparse
    solver can); ``"greedy"`` visits the candidates from the best
    down (:func:`greedy_matching`: at least half the optimal weight, never
    stalls). ``None``: optimal while ``n * m <= 2**22``, greedy beyond. When
    the candidates admit no matching of every row (or column, if fewer), pairs
    outside them are used, at a cost above any matching inside (optimal: as
    few as possible; greedy: the free rows take the free columns in order),
    and a :class:`DecodingWarning` says how many.

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.
        cost (callable, optional): cost on index pairs ``cost(rows, cols)``. Default ``None``.
        candidates (int, optional): entries kept per row. Default: as above.
        assignment (str, optional): ``"optimal"`` or ``"greedy"``. Default: optimal while the
            candidates admit a full matching, greedy otherwise.

    Returns:
        Tensor: ``(n,)`` int64.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import to_permutation
        >>> to_permutation(torch.tensor([[0.3, 0.2, 0.0], [0.4, 0.0, 0.0], [0.0, 0.1, 0.3]])).tolist()
        [1, 0, 2]
    """
    if candidates is not None and (not isinstance(candidates, int) or candidates < 1):
        raise ValueError(f"candidates must be a positive integer or None, got {candidates!r}")
    if assignment not in (None, "optimal", "greedy"):
        raise ValueError(f"assignment must be 'optimal', 'greedy' or None, got {assignment!r}")
    if (cost is None and candidates is None and assignment != "greedy" and _is_dense(plan)
            and plan.numel() <= _DENSE_LIMIT):
        # a dense plan (neighbourhood votes) as it is: no list of its n * m entries
        p = plan.detach().double().cpu().numpy()
        if not np.isfinite(p).all():
            raise ValueError("plan holds non-finite values")
        inside = p != 0
        w = (p[inside].max() if inside.any() else 0.0) - p + 1.0
        match, outside = _assign_dense(w, inside)
        return _matching(match, outside, min(p.shape), plan.device)
    rows, cols, vals, n, m = _coo(plan)
    if candidates is None and n * m > _DENSE_LIMIT:
        candidates = _SPARSE_CANDIDATES
    if assignment is None:
        assignment = "optimal" if n * m <= _DENSE_LIMIT else "greedy"
    if cost is None:
        if candidates is not None:
            rows, cols, vals = top_per_row(rows, cols, vals, n, candidates)
        if not bool(torch.isfinite(vals).all()):
            raise ValueError("plan holds non-finite values")
        w = (vals.max() - vals).double() if vals.numel() else vals.double()
    else:
        w = cost(rows.view(1, -1), cols.view(1, -1)).detach().reshape(-1).double()
        if w.shape != rows.shape or not bool(torch.isfinite(w).all()):
            raise ValueError("cost(rows, cols) must return finite values of the shape of its inputs")
        if candidates is not None:  # the plan proposes its support, the cost ranks it
            rows, cols, w = top_per_row(rows, cols, -w, n, candidates)
            w = -w
        w = w - w.min() if w.numel() else w
    r, c, w = rows.cpu().numpy(), cols.cpu().numpy(), w.cpu().numpy() + 1.0  # > 0: no explicit zeros
    best = _row_minima_matching(r, c, w, n, m)
    if best is not None:
        return torch.as_tensor(best, dtype=torch.long, device=rows.device)
    k = min(n, m)
    if assignment == "greedy":
        match = _greedy(r, c, -w, n, m)
        free_rows, free_cols = np.flatnonzero(match < 0), np.setdiff1d(np.arange(m), match[match >= 0])
        outside = min(free_rows.size, free_cols.size)
        match[free_rows[:outside]] = free_cols[:outside]
        return _matching(match, outside, k, rows.device, greedy=True)
    # below the limit always dense: the sparse solver is faster on a banded plan's support but can
    # stall on one (benchmarks/RESULTS.md, design measurements)
    if n * m <= _DENSE_LIMIT:
        D = np.ones((n, m))
        D[r, c] = w
        inside = np.zeros((n, m), dtype=bool)
        inside[r, c] = True
        match, outside = _assign_dense(D, inside, rows_checked=True)
    else:  # exact sparse assignment (LAPMOD), completed by escape pairs: never infeasible
        match, outside = sparse_assignment(r, c, w, n, m)
    return _matching(match, outside, k, rows.device)


def _matching(match: np.ndarray, outside: int, k: int, device: torch.device, greedy: bool = False) -> Tensor:
    if outside:
        why = ("the greedy matching left rows without a free candidate" if greedy
               else "the plan's support has no full matching")
        warnings.warn(f"{why}; {outside} of {k} pairs were matched outside it", DecodingWarning, stacklevel=3)
    return torch.as_tensor(match, dtype=torch.long, device=device)


def greedy_matching(plan: PlanLike) -> Tensor:
    r"""A one-to-one matching by greedy selection, ``(n,)`` target per source (``-1`` if none).

    The stored entries are visited from the largest down (ties in row-major order),
    and a pair is kept when its row and its column are both still free: a maximal
    matching of at least half the optimal weight, in ``O(nnz log nnz)``. Where many
    entries tie (integer neighbourhood votes) exact sparse assignment can stall;
    this cannot.

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.

    Returns:
        Tensor: ``(n,)`` int64.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import greedy_matching
        >>> greedy_matching(torch.tensor([[0.3, 0.2], [0.4, 0.0]])).tolist()   # 0.4 first, then row 0 takes the rest
        [1, 0]
    """
    rows, cols, vals, n, m = _coo(plan)
    match = _greedy(rows.cpu().numpy(), cols.cpu().numpy(), vals.double().cpu().numpy(), n, m)
    return torch.as_tensor(match, dtype=torch.long, device=rows.device)


def row_argmax(plan: PlanLike) -> Tensor:
    """Column of the largest entry of every row, ``(n,)`` (``-1`` for an empty row).

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.

    Returns:
        Tensor: ``(n,)`` int64.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import row_argmax
        >>> row_argmax(torch.tensor([[0.3, 0.2], [0.4, 0.0]])).tolist()
        [0, 0]
    """
    if isinstance(plan, TransportPlan) and plan.num_slices == 1:
        return plan.row_argmax().reshape(-1)
    rows, cols, vals, n, _ = _coo(plan)
    best = torch.full((n,), -float("inf"), dtype=vals.dtype, device=vals.device)
    best = best.scatter_reduce(0, rows, vals, "amax")
    is_best = vals == best[rows]
    out = torch.full((n,), -1, dtype=torch.long, device=vals.device)
    return out.scatter_reduce(0, rows[is_best], cols[is_best], "amax", include_self=True)


def matching_accuracy(pred: Tensor, y: Tensor) -> float:
    """Fraction of ground-truth pairs ``y`` that the matching ``pred`` ``(n,)`` reproduces.

    Args:
        pred (Tensor): ``(n,)`` target per source (``-1``: unmatched).
        y (Tensor): ``(2, M)`` ground-truth pairs (source, target).

    Returns:
        float: in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import matching_accuracy
        >>> matching_accuracy(torch.tensor([2, 0, 1]), torch.tensor([[0, 1, 2], [2, 1, 0]]))
        0.3333333333333333
    """
    src, dst = _truth(y, pred.numel())
    if src.numel() == 0:
        raise ValueError("y holds no ground-truth pairs")
    return float((pred.to(dst.device)[src] == dst).double().mean())


def perm_accuracy(plan: PlanLike, y: Tensor, decoder: str = "hungarian",
                  cost: Callable[[Tensor, Tensor], Tensor] | None = None) -> float:
    r"""Accuracy of the decoded matching against ``y``.

    ``decoder="argmax"`` takes the largest entry of each row (several rows may
    pick the same column); ``"hungarian"`` decodes a one-to-one matching with
    :func:`to_permutation` (``cost`` optional).

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.
        y (Tensor): ``(2, M)`` ground-truth pairs (source, target).
        decoder (str): ``"hungarian"`` or ``"argmax"``. Default ``"hungarian"``.
        cost (callable, optional): lifted cost on index pairs for the decoding. Default ``None``.

    Returns:
        float: in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import perm_accuracy
        >>> plan = torch.tensor([[0.3, 0.2], [0.4, 0.0]])
        >>> y = torch.tensor([[0, 1], [1, 0]])
        >>> perm_accuracy(plan, y, "argmax"), perm_accuracy(plan, y, "hungarian")
        (0.5, 1.0)
    """
    _truth(y, *_shape(plan))
    if decoder == "argmax":
        return matching_accuracy(row_argmax(plan), y)
    if decoder == "hungarian":
        return matching_accuracy(to_permutation(plan, cost), y)
    raise ValueError(f"decoder must be 'argmax' or 'hungarian', got {decoder!r}")


def hits_at_k(plan: PlanLike, y: Tensor, k: int = 1) -> float:
    """Fraction of ground-truth pairs whose target is among the ``k`` largest entries of its row.

    An entry tied with the true one ranks above it, so ties never count as hits
    (on a plan of equal entries hits@1 is 0 whatever ``k < m``).

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.
        y (Tensor): ``(2, M)`` ground-truth pairs (source, target).
        k (int): Default ``1``.

    Returns:
        float: in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from glass_pyg.metrics import hits_at_k
        >>> plan = torch.tensor([[0.3, 0.2, 0.1], [0.4, 0.0, 0.2], [0.1, 0.5, 0.0]])
        >>> y = torch.tensor([[0, 1, 2], [1, 2, 0]])
        >>> hits_at_k(plan, y, 1), hits_at_k(plan, y, 2)
        (0.0, 1.0)
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    rows, cols, vals, n, m = _coo(plan)
    src, dst = _truth(y, n, m)
    src, dst = src.to(rows.device), dst.to(rows.device)
    key = rows * m + cols
    order = torch.argsort(key)
    key, vals_sorted = key[order], vals[order]
    q = src * m + dst
    pos = torch.searchsorted(key, q).clamp_max(max(key.numel() - 1, 0))
    found = (key.numel() > 0) & (key[pos] == q) if key.numel() else torch.zeros_like(q, dtype=torch.bool)
    v_true = torch.where(found, vals_sorted[pos], torch.zeros_like(q, dtype=vals.dtype))
    # rank = entries of the row larger than the true entry or tied with it (ties count against the
    # matcher: on a plan of equal entries no pair is a hit)
    by_row = torch.argsort(rows)
    rows_s, vals_s = rows[by_row], vals[by_row]
    start = torch.searchsorted(rows_s, src)
    length = torch.searchsorted(rows_s, src, right=True) - start
    owner = torch.repeat_interleave(torch.arange(q.numel(), device=q.device), length)
    first = torch.repeat_interleave(start - torch.cumsum(length, 0) + length, length)
    entry = first + torch.arange(owner.numel(), device=q.device)
    bigger = (vals_s[entry] >= v_true[owner]).long()
    larger = torch.zeros(q.numel(), dtype=torch.long, device=q.device).index_add_(0, owner, bigger) - found.long()
    return float(((larger < k) & found & (v_true > 0)).double().mean())


def plan_entropy(plan: PlanLike) -> float:
    r"""Entropy :math:`-\sum_{ij} P_{ij}\log P_{ij}` of the (slice-averaged) plan.

    Args:
        plan: a :class:`~glass_pyg.ot.TransportPlan`, or a sparse or dense ``(n, m)`` tensor.

    Returns:
        float: in nats.

    Example:
        >>> import math, torch
        >>> from glass_pyg.metrics import plan_entropy
        >>> abs(plan_entropy(torch.full((2, 2), 0.25, dtype=torch.float64)) - math.log(4)) < 1e-12
        True
    """
    _, _, vals, _, _ = _coo(plan)
    return float(-torch.special.xlogy(vals, vals).sum())
