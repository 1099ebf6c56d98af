r"""Compiled passes of the preconditioners of :class:`~glass_pyg.ot._laplacian.BandOperator`, both
built on the plan's nodes in staircase order: the staircase factor (the couplings between nearby
nodes, their elimination, the solve) and the path (its cut weights, its solve)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import (
    _extents,
    _library,
    _parallel,
    _plan_layout,
    _plan_suffix,
    _ptr,
    _ranges,
    _rows,
    _scratch,
    _suffix,
    _threads,
    _windows,
)

#: bandwidth of the staircase factor (STAIR_K in the C source). At rank temperature the couplings
#: more than 16 apart hold under 1% of the mass, yet leaving them out spreads the preconditioned
#: spectrum over [1, 2]: 32 halves the iterations of 16 for twice the factor's memory
STAIRCASE_WIDTH = 32


def _plan_pass(p: Tensor, start: Tensor, width: int, row_pos: Tensor, col_pos: Tensor, lo: Tensor | None,
               hi: Tensor | None, offsets: Tensor | None, dtype: torch.dtype | None) -> tuple:
    # the checked arguments of a pass over the plan that reads its entries' staircase positions
    L, n = start.shape
    m = col_pos.shape[1]
    start = _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    offsets = _plan_layout(p, L, n, width, offsets, lo)
    row_pos, col_pos = row_pos.to(torch.int64).contiguous(), col_pos.to(torch.int64).contiguous()
    return L, n, m, start, lo, hi, offsets, row_pos, col_pos, p.dtype if dtype is None else dtype


def band_cut_diff(p: Tensor, start: Tensor, width: int, row_pos: Tensor, col_pos: Tensor,
                  lo: Tensor | None = None, hi: Tensor | None = None,
                  dtype: torch.dtype | None = None, offsets: Tensor | None = None,
                  tiny: float = 0.0) -> Tensor:
    r"""Differences of the path cut weights (L, n + m), in ``dtype`` (default ``p``'s): entry
    ``(i, j)`` of ``p`` (padded, or compact with ``offsets``) adds ``p_{ij} |pos_i - pos_j|``
    at the lower and removes it at the higher position (entries below ``tiny`` count as zeros)."""
    L, n, m, start, lo, hi, offsets, row_pos, col_pos, dtype = _plan_pass(p, start, width, row_pos, col_pos, lo,
                                                                         hi, offsets, dtype)
    diff = p.new_zeros(_threads(L, n, width), L, n + m, dtype=dtype)
    _rows("band_cut_diff", _plan_suffix(dtype, p.dtype), L, n, m, width, _ptr(p), _ptr(start), _ptr(lo),
          _ptr(hi), _ptr(offsets), float(tiny), _ptr(row_pos), _ptr(col_pos), accumulators=list(diff))
    return diff.sum(0) if diff.shape[0] > 1 else diff[0]


def path_precondition(row_pos: Tensor, col_pos: Tensor, yr: Tensor, yc: Tensor, inv_cut: Tensor,
                      inv_r: Tensor, inv_c: Tensor, workspace: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""The path preconditioner of :class:`~glass_pyg.ot._laplacian.BandOperator` in one pass
    (``inv_cut``: the inverse cut weights, ``(L, n + m - 1)``): ``(x_r, x_c)`` and
    :math:`\langle y, x\rangle` per slice ``(L,)``. With a ``workspace`` dict ``x`` lies in
    its buffers, which the next call with it overwrites."""
    L, n = yr.shape
    m = yc.shape[1]
    args = [v.contiguous() for v in (row_pos, col_pos, yr, yc, inv_cut, inv_r, inv_c)]
    if args[0].dtype != torch.int64 or args[1].dtype != torch.int64:
        raise ValueError("row_pos and col_pos must be int64")
    z = _scratch(workspace, "path", (L, n + m), yr)
    xr, xc = _scratch(workspace, "precondition_r", (L, n), yr), _scratch(workspace, "precondition_c", (L, m), yc)
    dot = yr.new_empty(L)
    getattr(_library(), "path_precondition_" + _suffix(yr.dtype))(
        L, n, m, *(_ptr(v) for v in args), _ptr(z), _ptr(xr), _ptr(xc), _ptr(dot))
    return xr, xc, dot


def staircase_weights(p: Tensor, start: Tensor, width: int, row_pos: Tensor, col_pos: Tensor, scale: Tensor,
                      lo: Tensor | None = None, hi: Tensor | None = None, dtype: torch.dtype | None = None,
                      offsets: Tensor | None = None, tiny: float = 0.0,
                      workspace: dict | None = None) -> tuple[Tensor, Tensor]:
    r"""The plan's couplings between staircase nodes at most :data:`STAIRCASE_WIDTH` positions
    apart, divided by ``scale`` (L,): ``w[l, q, d - 1]`` joins the nodes at positions ``q`` and
    ``q + d``, float32 ``(L, n + m, STAIRCASE_WIDTH)``. Entries below ``tiny``, scaled ones below
    ``1e-30`` and farther pairs are left out. ``p`` is padded (L, n, W), or compact with
    ``offsets``; ``dtype`` is the vectors' (default ``p``'s); ``w`` is ``workspace``'s buffer when
    given (the next call with it overwrites it).
    Also returns the share of each slice's mass that the farther pairs hold, ``(L,)``."""
    L, n, m, start, lo, hi, offsets, row_pos, col_pos, dtype = _plan_pass(p, start, width, row_pos, col_pos, lo,
                                                                         hi, offsets, dtype)
    scale = scale.to(dtype).contiguous()
    w = _scratch(workspace, "staircase_w", (L, n + m, STAIRCASE_WIDTH), p.new_empty(0, dtype=torch.float32),
                 zero=True)
    acc = torch.zeros(_threads(L, n, width), L, 2, dtype=dtype)
    _rows("staircase_weights", _plan_suffix(dtype, p.dtype), L, n, m, width, _ptr(p), _ptr(start), _ptr(lo),
          _ptr(hi), _ptr(offsets), float(tiny), _ptr(row_pos), _ptr(col_pos), _ptr(scale), _ptr(w),
          accumulators=list(acc))
    total, far = acc.sum(0).unbind(-1)
    return w, torch.where(total > 0, far / total.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(far))


def _slices(L: int) -> list[tuple[int, int]]:
    return _ranges(L, max(1, min(torch.get_num_threads(), L)))


def staircase_factor(w: Tensor, floor: Tensor, scale: Tensor, dtype: torch.dtype = torch.float64
                     ) -> tuple[Tensor, Tensor]:
    r"""Eliminate the staircase Laplacian of the scaled weights ``w`` (float32 (L, N, K), from
    :func:`staircase_weights` with ``scale``) in node order, in place: ``w`` becomes the unit
    lower factor's ratios. Returns each node's first ratio as the solve reads it (1 less the
    others: the solve moves residuals on whole) and the inverse pivots (unscaled), ``(L, N)``
    each in ``dtype``; the inverse pivot is 0 at the last node and at the grounded ones (scaled
    pivots below ``floor`` (L,), tied rigidly to the next node)."""
    L, N, K = w.shape
    if K != STAIRCASE_WIDTH or w.dtype != torch.float32 or not w.is_contiguous() or w.device.type != "cpu":
        raise ValueError(f"w must be a contiguous float32 CPU tensor of shape (L, N, {STAIRCASE_WIDTH})")
    floor, scale = floor.to(dtype).contiguous(), scale.to(dtype).contiguous()
    first, inv_pivot = torch.empty(L, N, dtype=dtype), torch.empty(L, N, dtype=dtype)
    fn = getattr(_library(), "staircase_factor_" + _suffix(dtype))
    _parallel([(fn, L, N, l0, l1, _ptr(w), _ptr(floor), _ptr(scale), _ptr(first), _ptr(inv_pivot))
               for l0, l1 in _slices(L)])
    return first, inv_pivot


def staircase_precondition(ratio: Tensor, first: Tensor, inv_pivot: Tensor, row_pos: Tensor, col_pos: Tensor,
                           yr: Tensor, yc: Tensor, inv_r: Tensor, inv_c: Tensor,
                           workspace: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r""":math:`x = M^{+} y` for the factor of :func:`staircase_factor` plus the diagonal inverse
    (``inv_r``, ``inv_c``) at the grounded nodes: ``(x_r, x_c)`` and :math:`\langle y, x\rangle`
    per slice. With a ``workspace`` dict ``x`` lies in its buffers (the next call overwrites them)."""
    L, n = yr.shape
    m = yc.shape[1]
    args = [v.contiguous() for v in (first, inv_pivot, row_pos, col_pos, yr, yc, inv_r, inv_c)]
    if args[2].dtype != torch.int64 or args[3].dtype != torch.int64:
        raise ValueError("row_pos and col_pos must be int64")
    if ratio.shape != (L, n + m, STAIRCASE_WIDTH) or ratio.dtype != torch.float32 or not ratio.is_contiguous():
        raise ValueError(f"ratio must be a contiguous float32 tensor of shape {(L, n + m, STAIRCASE_WIDTH)}")
    z = _scratch(workspace, "staircase", (L, n + m + STAIRCASE_WIDTH), yr)
    xr, xc = _scratch(workspace, "precondition_r", (L, n), yr), _scratch(workspace, "precondition_c", (L, m), yc)
    dot = yr.new_empty(L)
    fn = getattr(_library(), "staircase_precondition_" + _suffix(yr.dtype))
    _parallel([(fn, L, n, m, l0, l1, _ptr(ratio), *(_ptr(v) for v in args), _ptr(z), _ptr(xr), _ptr(xc), _ptr(dot))
               for l0, l1 in _slices(L)])
    return xr, xc, dot
