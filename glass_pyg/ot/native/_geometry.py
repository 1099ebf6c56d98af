r"""Compiled geometry around the solver: the shipped costs on a band's windows and the sphere projection's
chart scores, each with its gradient."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _PARALLEL_MIN_ENTRIES, _library, _parallel, _ptr, _ranges, _rows, _suffix, _threads, _windows

WINDOW_COSTS = {"squared_euclidean": 0, "squared_geodesic": 1}


def _window_points(xs: Tensor, xt: Tensor, kind: str) -> tuple[int, int, int, int]:
    if kind not in WINDOW_COSTS:
        raise ValueError(f"kind must be one of {sorted(WINDOW_COSTS)}, got {kind!r}")
    L, n, d = xs.shape
    m = xt.shape[1]
    if xt.shape != (L, m, d) or xt.dtype != xs.dtype or (kind == "squared_geodesic" and d != 3):
        raise ValueError(f"xt must be {xs.dtype} of shape (L, m, {d}) (d = 3 for squared_geodesic), "
                         f"got {xt.dtype} {tuple(xt.shape)}")
    return L, n, m, d


def window_costs(xs: Tensor, xt: Tensor, start: Tensor, width: int, kind: str) -> Tensor:
    r"""Costs of a band's window pairs, ``(L, n, W)``: ``out[l, i, k] = c(xs[l, i], xt[l, start[l, i] + k])``
    for points in the plan's sorted order, ``xs`` ``(L, n, d)``, ``xt`` ``(L, m, d)`` of one dtype;
    ``kind`` ``"squared_euclidean"`` or ``"squared_geodesic"`` (unit vectors, ``d = 3``,
    :math:`\operatorname{atan2}(\lVert x\times y\rVert, x\cdot y)^2`)."""
    L, n, m, d = _window_points(xs, xt, kind)
    xs, xt, start = xs.contiguous(), xt.contiguous(), _windows(start, width, m)
    out = xs.new_empty(L, n, width)
    _rows("window_costs", xs.dtype, L, n, m, width, d, WINDOW_COSTS[kind], _ptr(xs), _ptr(xt), _ptr(start),
          _ptr(out))
    return out


def window_costs_grad(xs: Tensor, xt: Tensor, start: Tensor, width: int, kind: str, v: Tensor,
                      g: Tensor) -> tuple[Tensor, Tensor]:
    r"""Gradients of :math:`\sum_l g_l \sum_{ik} v_{lik}\, \mathrm{out}_{lik}` (:func:`window_costs`)
    with respect to ``xs`` ``(L, n, d)`` and ``xt`` ``(L, m, d)``; ``v`` ``(L, n, W)`` and ``g``
    ``(L,)`` share the points' dtype."""
    L, n, m, d = _window_points(xs, xt, kind)
    if v.shape != (L, n, width) or v.dtype != xs.dtype or g.shape != (L,):
        raise ValueError(f"v must be {xs.dtype} of shape {(L, n, width)} and g of shape {(L,)}, got "
                         f"{v.dtype} {tuple(v.shape)} and {tuple(g.shape)}")
    xs, xt, start = xs.contiguous(), xt.contiguous(), _windows(start, width, m)
    v, g = v.contiguous(), g.to(xs.dtype).contiguous()
    gxs = xs.new_empty(L, n, d)
    acc = xs.new_zeros(_threads(L, n, width), L, m, d)
    _rows("window_costs_grad", xs.dtype, L, n, m, width, d, WINDOW_COSTS[kind], _ptr(xs), _ptr(xt), _ptr(start),
          _ptr(v), _ptr(g), _ptr(gxs), accumulators=list(acc))
    return gxs, acc.sum(0)


def _chart_args(x: Tensor, a: Tensor, u: Tensor, logw: Tensor) -> tuple[int, int, int, list[Tensor]]:
    N = x.shape[0]
    L, K = a.shape[:2]
    dtype = x.dtype
    for name, v, shape in (("x", x, (N, 3)), ("a", a, (L, K, 3)), ("u", u, (L, K, 3)), ("logw", logw, (L, K))):
        if v.shape != shape or v.dtype != dtype or v.device.type != "cpu":
            raise ValueError(f"{name} must be a {dtype} CPU tensor of shape {shape}, got {v.dtype} {tuple(v.shape)}")
    if K > 32:
        raise ValueError(f"the compiled chart scores take at most 32 anchors per slice, got {K}")
    return N, L, K, [v.contiguous() for v in (x, a, u, logw)]


def _split_points(fn, N: int, L: int, K: int, accumulators: list[Tensor] | None, *args) -> None:
    threads = len(accumulators) if accumulators is not None else (
        1 if N * L * K < _PARALLEL_MIN_ENTRIES // 8 else max(1, min(torch.get_num_threads(), N)))
    _parallel([(fn, N, L, K, lo, hi, *args, *((_ptr(accumulators[k]),) if accumulators is not None else ()))
               for k, (lo, hi) in enumerate(_ranges(N, threads))])


def chart_scores(x: Tensor, a: Tensor, u: Tensor, logw: Tensor, radius: float) -> Tensor:
    r"""Gated chart scores of :class:`~glass_pyg.nn.SphereProjection`, ``(N, L)``, in one pass:
    points ``x`` ``(N, 3)``, anchors ``a`` and tangent directions ``u`` ``(L, K, 3)``, log gate
    widths ``logw`` ``(L, K)``, chart radius ``radius`` (radians)."""
    N, L, K, (x, a, u, logw) = _chart_args(x, a, u, logw)
    out = x.new_empty(N, L)
    fn = getattr(_library(), "chart_scores_" + _suffix(x.dtype))
    _split_points(fn, N, L, K, None, _ptr(x), _ptr(a), _ptr(u), _ptr(logw), float(radius), _ptr(out))
    return out


def chart_scores_backward(x: Tensor, a: Tensor, u: Tensor, logw: Tensor, radius: float, grad: Tensor,
                          need_x: bool = True) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
    r"""Gradients of :math:`\sum_{il} G_{il}\,\mathrm{out}_{il}` (:func:`chart_scores`) with
    respect to ``x`` (None unless ``need_x``), ``a``, ``u`` and ``logw``."""
    N, L, K, (x, a, u, logw) = _chart_args(x, a, u, logw)
    if grad.shape != (N, L):
        raise ValueError(f"grad must have shape {(N, L)}, got {tuple(grad.shape)}")
    grad = grad.to(x.dtype).contiguous()
    gx = x.new_empty(N, 3) if need_x else None
    threads = 1 if N * L * K < _PARALLEL_MIN_ENTRIES // 8 else max(1, min(torch.get_num_threads(), N))
    acc = x.new_zeros(threads, 7 * L * K)
    fn = getattr(_library(), "chart_scores_backward_" + _suffix(x.dtype))
    _split_points(fn, N, L, K, list(acc), _ptr(x), _ptr(a), _ptr(u), _ptr(logw), float(radius), _ptr(grad),
                  _ptr(gx))
    acc = acc.sum(0)
    P = L * K
    return gx, acc[:3 * P].view(L, K, 3), acc[3 * P:6 * P].view(L, K, 3), acc[6 * P:].view(L, K)
