r"""Compiled passes of the band's set-up and check: the reference dual's relaxed staircase links,
the certificate of the mass outside the band."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library, _ptr


def link_relaxation(x: Tensor, y: Tensor, x_start: Tensor, y_start: Tensor, parent: Tensor,
                    gamma: Tensor) -> Tensor | None:
    r"""Reduced cost of each node's relaxed staircase link
    (:func:`~glass_pyg.ot._band.reference_dual`): float64 scores ``x`` and cell starts
    ``x_start`` (L, n) of one side, ``y``, ``y_start`` (L, m) of the other, ``parent`` (L, n)
    int64 (the other side's latest cell before each node, -1 for none), ``gamma`` (L,) ->
    (L, n). None where the kernels cannot take them."""
    vecs = (x, y, x_start, y_start, gamma)
    if _library() is None or any(v.device.type != "cpu" or v.dtype != torch.float64 for v in vecs) or \
            parent.device.type != "cpu":
        return None
    L, n = x.shape
    m = y.shape[1]
    args = [v.detach().contiguous() for v in vecs]
    parent = parent.to(torch.int64).contiguous()
    out = torch.empty_like(args[0])
    _library().link_relaxation(L, n, m, *(_ptr(v) for v in args[:4]), _ptr(parent), _ptr(args[4]), _ptr(out))
    return out


def certify_band(s: Tensor, t: Tensor, f0: Tensor, g0: Tensor, gamma: Tensor, phi: Tensor, psi: Tensor,
                 log_a: Tensor, log_b: Tensor, b: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor] | None:
    r"""The band's certificate (:func:`~glass_pyg.ot._certificate.certify`) in one pass: float64
    reference ``s, f0`` (L, n), ``t, g0`` (L, m), ``gamma`` (L,); potentials ``phi``, ``log_a``
    (L, n), ``psi``, ``log_b`` (L, m) (taken in float64); weights ``b`` (L, m); the rows' kept
    columns ``lo..hi`` (L, n) -> the bound on the omitted mass and whether it holds, (L,) each.
    None where the kernels cannot take them."""
    ref = (s, t, f0, g0, gamma)
    if _library() is None or any(v.device.type != "cpu" or v.dtype != torch.float64 for v in ref) or \
            any(v.device.type != "cpu" for v in (phi, psi, log_a, log_b, b, lo, hi)):
        return None
    L, n = s.shape
    m = t.shape[1]
    vecs = [v.detach().double().contiguous() for v in (*ref, phi, psi, log_a, log_b, b)]
    lo, hi = lo.to(torch.int64).contiguous(), hi.to(torch.int64).contiguous()
    first, last = torch.empty(L, m, dtype=torch.int64), torch.empty(L, m, dtype=torch.int64)
    cum, bound = torch.empty(L, m, dtype=torch.float64), torch.empty(L, dtype=torch.float64)
    ok = torch.empty(L, dtype=torch.int64)
    _library().certify_band(L, n, m, *(_ptr(v) for v in vecs), _ptr(lo), _ptr(hi), _ptr(first), _ptr(last),
                            _ptr(cum), _ptr(bound), _ptr(ok))
    return bound, ok.bool()
