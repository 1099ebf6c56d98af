r"""Compiled passes of the solver's implicit gradient around its adjoint solve, and of the transport
cost's gradient."""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from . import _extents, _plan_layout, _plan_suffix, _ptr, _rows, _threads, _windows
from ._cg import _vectors


def product_sums(p: Tensor, g: Tensor, start: Tensor, width: int, m: int, lo: Tensor,
                 hi: Tensor, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    r"""Row and column sums of :math:`P \odot G` over the band's extents: ``p``, ``g`` padded
    ``(L, n, W)`` of one dtype -> ``(L, n), (L, m)`` of ``dtype`` (default ``p``'s; float64 also
    for a float32 plan, the products and sums then in float64)."""
    L, n, W = p.shape
    dtype = p.dtype if dtype is None else dtype
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"g must match the plan {tuple(p.shape)} {p.dtype}, got {tuple(g.shape)} {g.dtype}")
    suffix = _plan_suffix(dtype, p.dtype)
    p, g, start = p.contiguous(), g.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    qr = p.new_empty(L, n, dtype=dtype)
    acc = p.new_zeros(_threads(L, n, W), L, m, dtype=dtype)
    _rows("product_sums", suffix, L, n, m, W, _ptr(p), _ptr(g), _ptr(start), _ptr(lo), _ptr(hi), _ptr(qr),
          accumulators=list(acc))
    return qr, acc.sum(0)


def implicit_grad(p: Tensor, g: Tensor, start: Tensor, width: int, lo: Tensor, hi: Tensor, u: Tensor,
                  v: Tensor, s: Tensor, t: Tensor, gamma: Tensor, sd: Tensor, td: Tensor, f0: Tensor,
                  g0: Tensor, gd: Tensor, floor: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""The implicit gradient's pass over the band (see ``FixedPointPlan``): with
    :math:`D = P \odot (G - u_i - v_j)` the gradient of the logits, returns the gradients of
    the scores ``s`` (L, n), ``t`` (L, m) and of ``gamma`` (L,) through
    :math:`\theta_{ij} = -((s_i - t_j)^2 - f^0_i - g^0_j)/\gamma`. ``p``, ``g`` padded
    ``(L, n, W)`` of one dtype; ``u, s`` (L, n), ``v, t`` (L, m), ``gamma`` (L,) share the plan's
    dtype, or float64 with a float32 plan (the pass then runs in float64); ``sd, f0`` (L, n),
    ``td, g0`` (L, m), ``gd`` (L,) are the float64 reference the logits were formed from
    (floored at ``floor``)."""
    L, n, W = p.shape
    m = t.shape[1]
    if g.shape != p.shape or g.dtype != p.dtype:
        raise ValueError(f"g must match the plan {tuple(p.shape)} {p.dtype}, got {tuple(g.shape)} {g.dtype}")
    _vectors(L, n, m, (u.contiguous(), s.contiguous()), (v.contiguous(), t.contiguous()), (gamma.contiguous(),))
    suffix = _plan_suffix(u.dtype, p.dtype)
    if any(x.dtype != torch.float64 for x in (sd, td, f0, g0, gd)):
        raise ValueError("the reference sd, td, f0, g0, gd must be float64")
    p, g, start = p.contiguous(), g.contiguous(), _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    vecs = [x.contiguous() for x in (u, v, s, t, gamma, sd, td, f0, g0, gd)]
    grad_s = u.new_empty(L, n)
    acc = u.new_zeros(_threads(L, n, W), L * m + L)
    _rows("implicit_grad", suffix, L, n, m, W, _ptr(p), _ptr(g), _ptr(start), _ptr(lo), _ptr(hi),
          *(_ptr(x) for x in vecs), ctypes.c_double(floor), _ptr(grad_s), accumulators=list(acc))
    acc = acc.sum(0)
    return grad_s, acc[:L * m].view(L, m), acc[L * m:]


def row_cost_grad(p: Tensor, start: Tensor, width: int, x: Tensor, y: Tensor, lo: Tensor, hi: Tensor,
                  g: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""The gradient of :math:`\sum_l g_l \sum_{ik} p_{lik} (x_{li} - y_{lj})^2` (the transport cost of
    the padded plan ``p`` (L, n, W) over its extents, ``g`` (L,)) with respect to ``p`` (on every window
    entry, of ``p``'s dtype), ``x`` (L, n) and ``y`` (L, m) (of ``x``'s dtype: ``p``'s, or float64 with a
    float32 plan)."""
    L, n = start.shape
    m = y.shape[1]
    suffix = _plan_suffix(x.dtype, p.dtype)
    start, x, y = _windows(start, width, m), x.contiguous(), y.contiguous()
    lo, hi = _extents(lo, hi)
    _plan_layout(p, L, n, width, None, lo)
    g = g.to(x.dtype).reshape(L).contiguous()
    gp, gx = torch.empty_like(p), x.new_empty(L, n)
    acc = x.new_zeros(_threads(L, n, width), L, m)
    _rows("row_cost_grad", suffix, L, n, m, width, _ptr(p), _ptr(start), _ptr(lo), _ptr(hi), _ptr(x), _ptr(y),
          _ptr(g), _ptr(gp), _ptr(gx), accumulators=list(acc))
    return gp, gx, acc.sum(0)
