r"""Exact 1-D optimal transport (the :math:`\gamma \to 0` limit): the monotone staircase."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _validation as V


def staircase_plan(s: Tensor, t: Tensor, a: Tensor | None = None,
                   b: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""Monotone (north-west corner) coupling of 1-D scores, in ``O((n+m) log(n+m))``.

    Merges the cumulative weights of the sorted scores; each segment of the
    merged partition of ``[0, mass]`` is one cell of the plan.

    Returns ``(rows, cols, mass)`` of one slice (``s`` of shape ``(n,)``), in
    original indices, at most ``n + m - 1`` cells.

    Args:
        s (Tensor): ``(n,)`` source scores.
        t (Tensor): ``(m,)`` target scores.
        a (Tensor, optional): positive source weights (uniform when ``None``).
        b (Tensor, optional): positive target weights of the same mass.

    Example:
        >>> import torch
        >>> from glass_pyg.ot import staircase_plan
        >>> rows, cols, mass = staircase_plan(torch.tensor([0.3, 0.1]), torch.tensor([0.0, 0.2, 0.4]))
        >>> rows.tolist(), cols.tolist()
        ([1, 1, 0, 0], [0, 1, 1, 2])
        >>> [round(float(v), 4) for v in mass]
        [0.3333, 0.1667, 0.1667, 0.3333]
    """
    if s.dim() != 1 or t.dim() != 1:
        raise ValueError(f"staircase_plan takes 1-D scores, got shapes {tuple(s.shape)} and {tuple(t.shape)}")
    s2, t2 = V.as_slices(s, "s"), V.as_slices(t, "t")
    a2, b2 = V.weights(a, s2, "a")[0], V.weights(b, t2, "b")[0]
    V.same_mass(a2[None], b2[None], 1e-5 if s.dtype != torch.float64 else 1e-9)
    ps, pt = torch.sort(s, stable=True).indices, torch.sort(t, stable=True).indices
    a_end = torch.cumsum(a2[ps], 0)
    b_end = torch.cumsum(b2[pt], 0)
    b_end = b_end * (a_end[-1] / b_end[-1])
    cuts = torch.unique(torch.cat([a_end, b_end]))  # sorted
    lower = torch.cat([cuts.new_zeros(1), cuts[:-1]])
    mass = cuts - lower
    keep = mass > 0
    mid = (0.5 * (cuts + lower))[keep]
    i = torch.searchsorted(a_end, mid).clamp(max=s.shape[0] - 1)
    j = torch.searchsorted(b_end, mid).clamp(max=t.shape[0] - 1)
    return ps[i], pt[j], mass[keep]


def emd_1d_cost(s: Tensor, t: Tensor, a: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    r"""Exact 1-D transport cost :math:`\min_P \sum_{ij} P_{ij}(s_i - t_j)^2`.

    Args:
        s (Tensor): ``(n,)`` or ``(L, n)`` source scores.
        t (Tensor): ``(m,)`` or ``(L, m)`` target scores.
        a (Tensor, optional): positive source weights (uniform when ``None``).
        b (Tensor, optional): positive target weights of the same mass.

    Returns:
        Tensor: scalar or ``(L,)``.

    Example:
        >>> import torch
        >>> from glass_pyg.ot import emd_1d_cost
        >>> float(emd_1d_cost(torch.tensor([0.0, 1.0]), torch.tensor([3.0, 2.0])))   # 0 -> 2, 1 -> 3: mean of 4 and 4
        4.0
    """
    rows, cols, mass = staircase_plan(s, t, a, b)
    return (mass * (s[rows] - t[cols]) ** 2).sum()
