r"""Compiled halves of a Sinkhorn sweep that evaluates each exp once.

The column pass sums :math:`e_{ij} = \exp(\phi_i + \theta_{ij} - h_j)` into the columns
(:math:`h` a guess of the column log-sum-exp) and keeps every :math:`e_{ij}` in a compact band.
With the column potentials :math:`\psi_j = \log b_j - h_j - \log s_j` the row marginals of the
plan :math:`(\phi, \psi)` are :math:`r_i = \sum_j e_{ij}\, b_j / s_j`: a multiply-add per entry
where a row log-sum-exp takes an exp."""
from __future__ import annotations

import ctypes
from typing import NamedTuple

import torch
from torch import Tensor

from . import _extents, _library, _plan_layout, _plan_suffix, _ptr, _rows, _suffix, _threads, _windows


class LogitReference(NamedTuple):
    r"""What the band's logits are formed from: float64 scores ``s`` (L, n), ``t`` (L, m), reference
    dual ``f0``, ``g0`` and ``gamma`` (L,), and the floor; :math:`\theta_{ij} = \max(-((s_i - t_j)^2 - f^0_i
    - g^0_j)/\gamma, \text{floor})`, bitwise as :func:`band_logits` forms it."""
    s: Tensor
    t: Tensor
    f0: Tensor
    g0: Tensor
    gamma: Tensor
    floor: float


def _kept_layout(keep: Tensor, offsets: Tensor, L: int, n: int) -> Tensor:
    offsets = offsets.contiguous()
    if offsets.shape != (L * n + 1,) or keep.dim() != 1 or not keep.is_contiguous() or keep.numel() < int(offsets[-1]):
        raise ValueError(f"keep must be a flat contiguous tensor of at least the offsets' last entry and offsets "
                         f"of shape {(L * n + 1,)}; got {tuple(keep.shape)} and {tuple(offsets.shape)}")
    return offsets


def col_sums_kept(x: Tensor, start: Tensor, width: int, theta: Tensor | LogitReference, m: int, lo: Tensor,
                  hi: Tensor, shift: Tensor, keep: Tensor, offsets: Tensor) -> Tensor:
    r"""Shifted column sums :math:`s_j = \sum_i \exp(x_i + \theta_{ij} - h_j)` over the rows whose extent
    ``lo <= j <= hi`` holds ``j``: ``x`` (L, n), ``shift`` :math:`h` (L, m), finite -> (L, m). Each term
    (arguments clamped to the exponent range, 0 below it) is written to ``keep`` (x's dtype, flat) at
    ``offsets`` (:func:`compact_offsets` of ``lo``, ``hi``).

    ``theta`` is the band's logits (L, n, W), or the :class:`LogitReference` they are formed from: the
    pass then forms each logit on the fly, bitwise as the tensor would hold it, and reads nothing
    band-sized (the logits' loads from memory bound the pass)."""
    L, n = x.shape
    x, start = x.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    offsets = _kept_layout(keep, offsets, L, n)
    if shift.shape != (L, m) or keep.dtype != x.dtype:
        raise ValueError(f"shift must have shape {(L, m)} and keep dtype {x.dtype}; got {tuple(shift.shape)} "
                         f"and {keep.dtype}")
    shift = shift.to(x.dtype).contiguous()
    acc = x.new_zeros(_threads(L, n, width), L, m)
    if isinstance(theta, LogitReference):
        ref = [v.to(torch.float64).contiguous() for v in (theta.s, theta.t, theta.f0, theta.g0, theta.gamma)]
        if ref[0].shape != (L, n) or ref[1].shape != (L, m) or ref[2].shape != (L, n) or ref[3].shape != (L, m) \
                or ref[4].numel() != L:
            raise ValueError(f"a logit reference needs s, f0 of shape {(L, n)}, t, g0 of shape {(L, m)} and "
                             f"{L} gammas; got {[tuple(v.shape) for v in ref]}")
        _rows("col_sums_ref", x.dtype, L, n, m, width, _ptr(x), _ptr(start), _ptr(lo), _ptr(hi),
              *(_ptr(v) for v in ref), ctypes.c_double(theta.floor), _ptr(shift), _ptr(offsets), _ptr(keep),
              accumulators=list(acc))
    else:
        theta = theta.contiguous()
        _rows("col_sums", x.dtype, L, n, m, width, _ptr(x), _ptr(start), _ptr(lo), _ptr(hi), _ptr(theta),
              _ptr(shift), _ptr(offsets), _ptr(keep), accumulators=list(acc))
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
              row_sum: Tensor | None = None, col_sum: Tensor | None = None) -> Tensor:
    r"""The plan :math:`k_{ij} c_j\,\sigma_l` of a sweep's kept exps ``keep`` (compact at ``offsets``),
    ``c`` (L, m) and ``scale`` :math:`\sigma` (L,), entries at most ``tiny`` set to 0, written into ``out``:
    padded (L, n, W), or compact at ``out_offsets``; of ``c``'s dtype, or float32 for float64. ``row_sum``
    (L, n) and ``col_sum`` (L, m), when given, receive the row and column sums before rounding."""
    L, m = c.shape
    n = start.shape[1]
    c, start = c.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    offsets = _kept_layout(keep, offsets, L, n)
    out_offsets = _plan_layout(out, L, n, width, out_offsets, lo)
    scale = scale.to(c.dtype).reshape(L).contiguous()
    for name, x, size in (("row_sum", row_sum, n), ("col_sum", col_sum, m)):
        if x is not None and (x.shape != (L, size) or x.dtype != c.dtype or not x.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous {c.dtype} tensor of shape {(L, size)}")
    acc = None if col_sum is None else c.new_zeros(_threads(L, n, width), L, m)
    args = (_ptr(c), _ptr(start), _ptr(lo), _ptr(hi), _ptr(offsets), _ptr(keep), _ptr(scale), float(tiny),
            _ptr(out_offsets), _ptr(out), _ptr(row_sum))
    suffix = _plan_suffix(c.dtype, out.dtype)
    if acc is None:
        _rows("kept_plan", suffix, L, n, m, width, *args, _ptr(None))
    else:  # one column accumulator per thread
        _rows("kept_plan", suffix, L, n, m, width, *args, accumulators=list(acc))
        torch.sum(acc, 0, out=col_sum)
    return out


def _vector_kernel(name: str, dtype):
    return getattr(_library(), f"{name}_{_suffix(dtype)}")


def sweep_shift(log_b: Tensor, psi: Tensor) -> Tensor:
    r"""The shift of a sweep's column pass, :math:`\log b - \psi` (0 where not finite): (L, m) -> (L, m)."""
    log_b, psi = log_b.contiguous(), psi.to(log_b.dtype).contiguous()
    out = torch.empty_like(log_b)
    _vector_kernel("sweep_shift", log_b.dtype)(log_b.numel(), _ptr(log_b), _ptr(psi), _ptr(out))
    return out


def sweep_cols(s: Tensor, shift: Tensor, log_b: Tensor, safe: tuple[float, float]) -> tuple[Tensor, Tensor, bool]:
    r"""A sweep's column update from its shifted sums ``s`` (L, m): :math:`\psi = \log b - (h + \log s)`,
    the row pass's factors :math:`c = b / s`, and whether every sum lies in ``safe``."""
    s, shift, log_b = s.contiguous(), shift.contiguous(), log_b.contiguous()
    psi, c = torch.empty_like(s), torch.empty_like(s)
    unsafe = torch.zeros(1, dtype=torch.int64)
    _vector_kernel("sweep_cols", s.dtype)(s.numel(), _ptr(s), _ptr(shift), _ptr(log_b), *safe, _ptr(psi), _ptr(c),
                                          _ptr(unsafe))
    return psi, c, int(unsafe) == 0


def sweep_rows(r: Tensor, phi: Tensor, log_a: Tensor, safe: tuple[float, float]) -> tuple[Tensor, Tensor, bool]:
    r"""A sweep's row update from the row marginals ``r`` (L, n) of :math:`(\phi, \psi(\phi))`:
    :math:`\phi + \log a - \log r`, the relative L1 marginal error per slice (L,), and whether every
    marginal lies in ``safe``."""
    r, phi, log_a = r.contiguous(), phi.contiguous(), log_a.contiguous()
    L, n = r.shape
    phi_next, err = torch.empty_like(r), r.new_empty(L)
    unsafe = torch.zeros(1, dtype=torch.int64)
    _vector_kernel("sweep_rows", r.dtype)(L, n, _ptr(r), _ptr(phi), _ptr(log_a), *safe, _ptr(phi_next), _ptr(err),
                                          _ptr(unsafe))
    return phi_next, err, int(unsafe) == 0
