r"""Compiled halves of a Sinkhorn sweep that evaluates each exp once.

The column pass sums :math:`e_{ij} = \exp(\phi_i + \theta_{ij} - h_j)` into the columns
(:math:`h` a guess of the column log-sum-exp) and keeps every :math:`e_{ij}` in a compact band.
With the column potentials :math:`\psi_j = \log b_j - h_j - \log s_j` the row marginals of the
plan :math:`(\phi, \psi)` are :math:`r_i = \sum_j e_{ij}\, b_j / s_j`: a multiply-add per entry
where a row log-sum-exp takes an exp."""
from __future__ import annotations

from torch import Tensor

from . import _extents, _plan_layout, _plan_suffix, _ptr, _rows, _threads, _windows


def _kept_layout(keep: Tensor, offsets: Tensor, L: int, n: int) -> Tensor:
    offsets = offsets.contiguous()
    if offsets.shape != (L * n + 1,) or keep.dim() != 1 or not keep.is_contiguous() or keep.numel() < int(offsets[-1]):
        raise ValueError(f"keep must be a flat contiguous tensor of at least the offsets' last entry and offsets "
                         f"of shape {(L * n + 1,)}; got {tuple(keep.shape)} and {tuple(offsets.shape)}")
    return offsets


def col_sums_kept(x: Tensor, start: Tensor, width: int, theta: Tensor, m: int, lo: Tensor, hi: Tensor,
                  shift: Tensor, keep: Tensor, offsets: Tensor) -> Tensor:
    r"""Shifted column sums :math:`s_j = \sum_i \exp(x_i + \theta_{ij} - h_j)` over the rows whose extent
    ``lo <= j <= hi`` holds ``j``: ``x`` (L, n), ``theta`` (L, n, W), ``shift`` :math:`h` (L, m), finite
    -> (L, m). Each term (arguments clamped to the exponent range, 0 below it) is written to ``keep``
    (x's dtype, flat) at ``offsets`` (:func:`compact_offsets` of ``lo``, ``hi``)."""
    L, n = x.shape
    x, start, theta = x.contiguous(), _windows(start, width, m), theta.contiguous()
    lo, hi = _extents(lo, hi)
    offsets = _kept_layout(keep, offsets, L, n)
    if shift.shape != (L, m) or keep.dtype != x.dtype:
        raise ValueError(f"shift must have shape {(L, m)} and keep dtype {x.dtype}; got {tuple(shift.shape)} "
                         f"and {keep.dtype}")
    shift = shift.to(x.dtype).contiguous()
    acc = x.new_zeros(_threads(L, n, width), L, m)
    _rows("col_sums", x.dtype, L, n, m, width, _ptr(x), _ptr(start), _ptr(lo), _ptr(hi), _ptr(theta), _ptr(shift),
          _ptr(offsets), _ptr(keep), accumulators=list(acc))
    return acc.sum(0) if acc.shape[0] > 1 else acc[0]


def row_dot(c: Tensor, start: Tensor, width: int, lo: Tensor, hi: Tensor, keep: Tensor, offsets: Tensor) -> Tensor:
    r""":math:`\sum_j k_{ij} c_j` over row ``i``'s extent, for the compact band ``keep`` that
    :func:`col_sums_kept` wrote: ``c`` (L, m) -> (L, n)."""
    L, m = c.shape
    n = start.shape[1]
    c, start = c.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    offsets = _kept_layout(keep, offsets, L, n)
    out = c.new_empty(L, n)
    _rows("row_dot", c.dtype, L, n, m, width, _ptr(c), _ptr(start), _ptr(lo), _ptr(hi), _ptr(offsets), _ptr(keep),
          _ptr(out))
    return out


def kept_plan(c: Tensor, start: Tensor, width: int, lo: Tensor, hi: Tensor, keep: Tensor, offsets: Tensor,
              scale: Tensor, out: Tensor, tiny: float = 0.0, out_offsets: Tensor | None = None,
              row_sum: Tensor | None = None) -> Tensor:
    r"""The plan :math:`k_{ij} c_j\,\sigma_l` of a sweep's kept exps ``keep`` (compact at ``offsets``),
    ``c`` (L, m) and ``scale`` :math:`\sigma` (L,), entries at most ``tiny`` set to 0, written into ``out``:
    padded (L, n, W), or compact at ``out_offsets``; of ``c``'s dtype, or float32 for float64. ``row_sum``
    (L, n), when given, receives the row sums before rounding."""
    L, m = c.shape
    n = start.shape[1]
    c, start = c.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    offsets = _kept_layout(keep, offsets, L, n)
    out_offsets = _plan_layout(out, L, n, width, out_offsets, lo)
    scale = scale.to(c.dtype).reshape(L).contiguous()
    if row_sum is not None and (row_sum.shape != (L, n) or row_sum.dtype != c.dtype or not row_sum.is_contiguous()):
        raise ValueError(f"row_sum must be a contiguous {c.dtype} tensor of shape {(L, n)}")
    _rows("kept_plan", _plan_suffix(c.dtype, out.dtype), L, n, m, width, _ptr(c), _ptr(start), _ptr(lo), _ptr(hi),
          _ptr(offsets), _ptr(keep), _ptr(scale), float(tiny), _ptr(out_offsets), _ptr(out), _ptr(row_sum))
    return out
