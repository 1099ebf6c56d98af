r"""Band structure of a sorted 1-D entropic plan.

With both score vectors sorted, the plan of :math:`C_{ij} = (s_i - t_j)^2`
is concentrated around the monotone staircase (north-west corner rule on the
cumulative weights). Row :math:`i` keeps the contiguous columns
``[row_start[i], row_start[i] + width)``; the starts never decrease with
``i``. Column :math:`j` sees the rows ``[col_start[j], col_start[j] +
col_width)`` of which ``[col_lo[j], col_hi[j]]`` are in the band (the rest is
padding, masked with the logit floor of :func:`band_logits`).

All tensors carry a leading slice axis ``L``; windows are gathered from
strided views, so no ``(L, n, W)`` index table is ever stored.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import native
from ._row_blocks import blockwise, window_gather, window_inside


def _searchsorted(sorted_seq: Tensor, values: Tensor, right: bool) -> Tensor:
    r"""``torch.searchsorted`` for sorted ``values`` (a merge on CPU)."""
    if not torch.is_grad_enabled() or not (sorted_seq.requires_grad or values.requires_grad):
        out = native.sorted_search(sorted_seq, values, right)
        if out is not None:
            return out
    return torch.searchsorted(sorted_seq.contiguous(), values.contiguous(), right=right)


@dataclass(frozen=True)
class Staircase:
    r"""Exact (:math:`\gamma \to 0`) monotone coupling of sorted weights.

    ``lo[i] .. hi[i]`` are the columns that row ``i`` shares positive mass with;
    ``row_pos``/``col_pos`` order the ``n + m`` nodes along the staircase path.
    """

    lo: Tensor  # (L, n) long
    hi: Tensor  # (L, n) long
    row_pos: Tensor  # (L, n) long, position of row i among the n + m nodes
    col_pos: Tensor  # (L, m) long
    a_start: Tensor  # (L, n) exclusive cumulative row mass (normalised)
    b_start: Tensor  # (L, m)


def staircase(a: Tensor, b: Tensor) -> Staircase:
    r"""North-west corner structure of sorted weights ``a`` (L, n), ``b`` (L, m)."""
    a_end = torch.cumsum(a, -1)
    b_end = torch.cumsum(b, -1)
    a_end = a_end / a_end[:, -1:]
    b_end = b_end / b_end[:, -1:]
    a_start = torch.cat([torch.zeros_like(a_end[:, :1]), a_end[:, :-1]], -1)
    b_start = torch.cat([torch.zeros_like(b_end[:, :1]), b_end[:, :-1]], -1)
    m = b.shape[-1]
    lo = _searchsorted(b_end, a_start, right=True).clamp_(max=m - 1)
    hi = _searchsorted(b_end, a_end, right=False).clamp_(max=m - 1)
    hi = torch.maximum(hi, lo)
    n_idx = torch.arange(a.shape[-1], device=a.device)
    m_idx = torch.arange(m, device=a.device)
    # rows come first on equal starts
    row_pos = n_idx + _searchsorted(b_start, a_start, right=False)
    col_pos = m_idx + _searchsorted(a_start, b_start, right=True)
    return Staircase(lo, hi, row_pos, col_pos, a_start, b_start)


def _row_parent(st: Staircase) -> Tensor:
    r"""Columns starting strictly before each row's start (``searchsorted(b_start, a_start)``)."""
    return st.row_pos - torch.arange(st.row_pos.shape[1], device=st.row_pos.device)


def _col_parent(st: Staircase) -> Tensor:
    r"""Rows starting at or before each column's start (``searchsorted(a_start, b_start, right=True)``)."""
    return st.col_pos - torch.arange(st.col_pos.shape[1], device=st.col_pos.device)


def exact_dual(s: Tensor, t: Tensor, st: Staircase) -> tuple[Tensor, Tensor]:
    r"""Dual potentials of the exact 1-D problem, tight on the staircase path.

    Along the path ``f_i - f_{i-1} = C_{i,p_i} - C_{i-1,p_i}`` with ``p_i`` the
    last column before row ``i``, and likewise for ``g``; computed by cumsum.
    """
    p = (_row_parent(st) - 1).clamp_(min=0)
    q = (_col_parent(st) - 1).clamp_(min=0)
    tp = torch.gather(t, 1, p)
    sq = torch.gather(s, 1, q)
    df = (s[:, 1:] - tp[:, 1:]) ** 2 - (s[:, :-1] - tp[:, 1:]) ** 2
    dg = (sq[:, 1:] - t[:, 1:]) ** 2 - (sq[:, 1:] - t[:, :-1]) ** 2
    f = torch.cat([torch.zeros_like(s[:, :1]), torch.cumsum(df, -1)], -1)
    g0 = (s[:, :1] - t[:, :1]) ** 2
    g = torch.cat([g0, g0 + torch.cumsum(dg, -1)], -1)
    return f, g


def _log_link_relaxation(eps: Tensor, m1: Tensor, m2: Tensor, gap: Tensor, gamma: Tensor) -> Tensor:
    r"""Reduced cost :math:`x \in [0, G/2]` of a staircase cell of mass ``eps`` that links two
    heavy cells of masses ``m1``, ``m2``, the other diagonal of the 4-cycle having gap ``G``.

    The entropic plan moves the net flux ``eps`` across the link with cross entries
    :math:`P_{\times} - P_{\times}' = \varepsilon`, :math:`P_\times P_\times' =
    m_1 m_2 e^{-G/\gamma}`, so :math:`P_\times = \sqrt{m_1 m_2}\,u` with
    :math:`u^2 - e u - e^{-G/\gamma} = 0`, :math:`e = \varepsilon/\sqrt{m_1 m_2}`, and
    :math:`x = -\gamma \log u`.
    """
    log_e = eps.log() - 0.5 * (m1.log() + m2.log())
    log_c = -gap / gamma
    log_root = 0.5 * torch.logaddexp(2 * log_e, log_c + math.log(4.0))
    log_u = torch.logaddexp(log_e, log_root) - math.log(2.0)
    x = torch.nan_to_num(-gamma * log_u, nan=0.0, posinf=float("inf"), neginf=0.0)
    return torch.minimum(x.clamp_min(0.0), 0.5 * gap)


def reference_dual(s: Tensor, t: Tensor, st: Staircase, gamma: Tensor) -> tuple[Tensor, Tensor]:
    r"""Exact 1-D dual potentials with weak staircase links relaxed for temperature ``gamma``.

    :func:`exact_dual` makes every staircase cell tight, including cells of
    (nearly) zero mass where the staircase breaks into blocks (every cell
    boundary when ``n = m`` with uniform weights). Across such a link the exact
    dual may take any value in an interval of width
    :math:`G = 2(s_i - s_{i-1})(t_q - t_p)`, and the entropic dual sits near its
    middle, up to :math:`G/(2\gamma)` units of :math:`\gamma` away from
    ``exact_dual``'s end of it. Where scores are sparse against
    :math:`\sqrt\gamma` (distribution tails at rank temperature) that is
    thousands of units. Each link (a node and the latest node of the other side
    before it on the staircase path) is relaxed by :func:`_log_link_relaxation`;
    a relaxed link shifts everything after it on the path, rows down and
    columns up, which keeps every other staircase cell tight.

    ``s`` ``(L, n)``, ``t`` ``(L, m)`` sorted, ``gamma`` ``(L,)``; float64 in, float64 out.
    """
    f, g = exact_dual(s, t, st)
    L, n = s.shape
    m = t.shape[1]
    # rows: the latest column starting strictly before; columns: the latest row starting at or before
    x_r = _relaxed_links(s, t, st.a_start, st.b_start, _row_parent(st) - 1, gamma)
    x_c = _relaxed_links(t, s, st.b_start, st.a_start, _col_parent(st) - 1, gamma)
    # cumulative shift along the path: rows down, columns up
    shift = s.new_zeros(L, n + m)
    shift.scatter_(1, st.row_pos, x_r)
    shift.scatter_(1, st.col_pos, -x_c)
    shift = torch.cumsum(shift, -1)
    return f - torch.gather(shift, 1, st.row_pos), g + torch.gather(shift, 1, st.col_pos)


def _relaxed_links(x: Tensor, y: Tensor, x_start: Tensor, y_start: Tensor, parent: Tensor,
                   gamma: Tensor) -> Tensor:
    r"""Reduced cost of each node's link, 0 where it has none: node ``i`` of one side (scores ``x``,
    cells from ``x_start``) links the other side's cells ``p = parent_i`` and ``q = p + 1`` (scores
    ``y``, cells from ``y_start``); its own cell has mass :math:`\varepsilon` in ``p``'s and
    follows heavy cells of masses ``m1``, ``m2``. In one compiled pass where the kernels take it."""
    found = native.link_relaxation(x, y, x_start, y_start, parent, gamma)
    if found is not None:
        return found
    n, m = x.shape[1], y.shape[1]
    one = torch.ones_like(x[:, :1])
    x_end = torch.cat([x_start[:, 1:], one], -1)
    y_end = torch.cat([y_start[:, 1:], one], -1)
    p, q = parent, parent + 1
    ok = (p >= 0) & (q < m) & (torch.arange(n, device=x.device) > 0)
    p_, q_ = p.clamp(0, m - 1), q.clamp(0, m - 1)
    prev = torch.cat([x_start[:, :1], x_start[:, :-1]], -1)
    eps = (torch.gather(y_end, 1, p_) - x_start).clamp(min=0.0)
    m1 = x_start - torch.maximum(prev, torch.gather(y_start, 1, p_))
    m2 = torch.minimum(x_end, torch.gather(y_end, 1, q_)) - torch.gather(y_start, 1, q_)
    dx = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], -1)
    gap = 2 * dx * (torch.gather(y, 1, q_) - torch.gather(y, 1, p_))
    return torch.where(ok & (m1 > 0) & (m2 > 0), _log_link_relaxation(eps, m1, m2, gap, gamma.view(-1, 1)),
                       torch.zeros_like(x))


@dataclass(frozen=True)
class Band:
    r"""Row windows of width ``width`` and their transposed column windows.

    Row ``i`` of the band holds the columns ``row_lo[i] .. row_hi[i]`` (its
    extent, both ends non-decreasing in ``i``), stored in the window
    ``row_start[i] .. row_start[i] + width - 1``; column ``j`` holds the rows
    ``col_lo[j] .. col_hi[j]``, stored from ``col_start[j]``. Window entries
    outside the extent are padding.
    """

    row_start: Tensor  # (L, n) long, non-decreasing
    width: int
    col_start: Tensor  # (L, m) long
    col_width: int
    col_lo: Tensor  # (L, m) long, first row of the band in column j
    col_hi: Tensor  # (L, m) long, last row
    row_lo: Tensor  # (L, n) long, first column of the band in row i
    row_hi: Tensor  # (L, n) long, last column

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(L, n, m)``: slices, sources and targets of the band."""
        return (self.row_start.shape[0], self.row_start.shape[1], self.col_start.shape[1])


def make_band(lo: Tensor, hi: Tensor, m: int) -> Band:
    r"""Smallest padded band whose row ``i`` covers columns ``lo[i]..hi[i]``.

    Ends are made monotone (which only widens) so the transposed windows are
    contiguous.
    """
    n = lo.shape[-1]
    lo = torch.flip(torch.cummin(torch.flip(lo, [-1]), -1).values, [-1])
    hi = torch.cummax(hi, -1).values
    width = int((hi - lo + 1).max())
    width = max(1, min(width, m))
    row_start = lo.clamp(max=m - width)
    j = torch.arange(m, device=lo.device).expand(lo.shape[0], m)
    col_lo = _searchsorted(hi, j, right=False)  # first row reaching column j
    col_hi = _searchsorted(lo, j, right=True) - 1  # last row starting at or before j
    col_width = int((col_hi - col_lo + 1).max())
    col_width = max(1, min(col_width, n))
    col_start = col_lo.clamp(max=n - col_width)
    return Band(row_start, width, col_start, col_width, col_lo, col_hi, lo, hi)


def band_logits(s: Tensor, t: Tensor, gamma: Tensor, band: Band, f0: Tensor, g0: Tensor,
                dtype: torch.dtype, layout: str = "row") -> Tensor:
    r"""Reduced logits :math:`-(C_{ij} - f^0_i - g^0_j)/\gamma` on the row (``layout="row"``,
    ``(L, n, W)``) or column (``"col"``, ``(L, m, W_c)``) windows, evaluated in float64 and
    returned in ``dtype``.

    ``f0, g0`` are the reference dual potentials; removing them before the
    division by a small :math:`\gamma` cancels the large parts of the logits
    exactly, so the iterations only carry corrections of order
    :math:`\log n`. That is what makes float32 usable when :math:`\gamma` is
    tiny against the spread of the scores (rank temperature). Both layouts
    subtract in the same order, so an entry's logit is bitwise the same in each.

    Logits are floored at :math:`0.85\log(\text{tiny})` of ``dtype`` (about
    -600 in float64, -74 in float32), and padding takes the floor: entries
    there weigh below :math:`10^{-260}` (:math:`10^{-32}`) of a staircase
    cell, and ``exp`` of an argument past the underflow point is an order of
    magnitude slower on CPUs.
    """
    if layout not in ("row", "col"):
        raise ValueError(f"layout must be 'row' or 'col', got {layout!r}")
    s, t, g = s.double(), t.double(), gamma.double().view(-1, 1, 1)
    L, n, m = band.shape
    floor = logit_floor(dtype)
    if native.usable(s, t, f0, g0, g):
        gl = g.reshape(L)
        if layout == "row":
            return native.band_logits(s, t, f0, g0, gl, band.row_start, band.width, floor, dtype,
                                      band.row_lo, band.row_hi)
        return native.band_logits(t, s, g0, f0, gl, band.col_start, band.col_width, floor, dtype,
                                  band.col_lo, band.col_hi, transposed=True)

    if layout == "row":
        return blockwise(lambda sl: row_logits(s, t, gamma, band, f0, g0, dtype, sl), L, n, band.width, s.device)

    def cols(sl: slice) -> Tensor:
        start = band.col_start[:, sl]
        theta = -((window_gather(s, start, band.col_width) - t[:, sl].unsqueeze(-1)) ** 2
                  - window_gather(f0, start, band.col_width) - g0[:, sl].unsqueeze(-1)) / g
        return _floored(theta, start, band.col_lo[:, sl], band.col_hi[:, sl], floor, dtype)

    return blockwise(cols, L, m, band.col_width, s.device)


def logit_floor(dtype: torch.dtype) -> float:
    """The floor of :func:`band_logits` in ``dtype``."""
    return 0.85 * math.log(torch.finfo(dtype).tiny)


def _floored(theta: Tensor, start: Tensor, lo: Tensor, hi: Tensor, floor: float, dtype: torch.dtype) -> Tensor:
    inside = window_inside(start, theta.shape[-1], lo, hi)
    return theta.clamp(min=floor).masked_fill(~inside, floor).to(dtype)


def row_logits(s: Tensor, t: Tensor, gamma: Tensor, band: Band, f0: Tensor, g0: Tensor, dtype: torch.dtype,
               rows: slice) -> Tensor:
    r"""The rows ``rows`` of :func:`band_logits`'s row layout, ``(L, len(rows), W)``, in torch
    (bitwise what the compiled kernel writes)."""
    s, t, g = s.double(), t.double(), gamma.double().view(-1, 1, 1)
    start = band.row_start[:, rows]
    theta = -((s[:, rows].unsqueeze(-1) - window_gather(t, start, band.width)) ** 2 - f0[:, rows].unsqueeze(-1)
              - window_gather(g0, start, band.width)) / g
    return _floored(theta, start, band.row_lo[:, rows], band.row_hi[:, rows], logit_floor(dtype), dtype)


def search_extent(pred, anchor: Tensor, limit: int, size: int) -> Tensor:
    r"""Farthest ``j`` from ``anchor`` towards ``limit`` with ``pred(j)`` true.

    ``pred`` must hold at ``anchor`` and be monotone along the way (true, then
    false); ``size`` bounds the distance. Vectorised bisection with a fixed
    number of steps: no host synchronisation. ``limit`` is ``0`` (search left)
    or the last index (search right).
    """
    near = anchor.clone()
    far = torch.full_like(anchor, limit)
    right = limit > 0
    for _ in range(max(1, int(size).bit_length() + 1)):
        mid = (near + far + 1) // 2 if right else (near + far) // 2
        ok = pred(mid)
        far = torch.where(ok, far, mid - 1 if right else mid + 1)
        near = torch.where(ok, mid, near)
    return near
