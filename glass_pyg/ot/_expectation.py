r"""Lifted expectations :math:`\langle P, D\rangle` of a cost built from per-point geometry.

For :math:`D_{ij} = c(x_i, y_j)` the expectation touches ``L n W`` pairs of
``d``-dimensional points. Gathering them all at once (and keeping them for
the backward) costs ``L n W d`` values of memory traffic twice over; here the
pairs are visited in row blocks, and only plan-shaped tensors are stored
whole: the cost values, kept from the forward (they are the gradient with
respect to the plan), and the points' gradients, which the backward forms in
row blocks again, and only when the points require them. Pairs whose plan
entry is exactly zero (the padding of the band's window, about half of it, and
underflow) are skipped: they add nothing to the expectation, and their cost is
left at zero in the gradient with respect to the plan, which every plan of this
package multiplies by the entry itself (:math:`\partial P_{ij} = P_{ij}\,
\partial\theta_{ij}`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import native
from ._band import Band
from ._row_blocks import add_to_columns, row_blocks, window_gather

PairFunction = Callable[[Tensor, Tensor], Tensor]


def _blocked_costs(values: Tensor, x_s: Tensor, x_t: Tensor, rows: Tensor, cols: Tensor,
                   pair: PairFunction) -> tuple[Tensor, Tensor]:
    """The expectation per slice and the costs on the nonzero entries (zero elsewhere), in row blocks."""
    L, n, W = values.shape
    out = values.new_zeros(L)
    cost = torch.zeros_like(values)
    with torch.no_grad():
        for sl in row_blocks(L, n, W * x_s.shape[1], values.device):
            stored = values[:, sl] != 0
            block = cost[:, sl]
            block[stored] = pair(x_s[rows[:, sl][stored]], x_t[cols[:, sl][stored]]).to(values.dtype)
            out += (values[:, sl] * block).sum((-2, -1))
    return out, cost


class BlockedExpectation(torch.autograd.Function):
    r""":math:`\sum_{ik} V_{lik}\, c(x_{r_{lik}}, y_{c_{lik}})` per slice ``l``, in row blocks.

    ``values``, ``rows``, ``cols`` are ``(L, n, W)``; ``x_s`` ``(n_s, d)``, ``x_t``
    ``(n_t, d)``; ``pair(x, y)`` maps ``(k, d), (k, d)`` to ``(k,)``.
    Differentiable once in ``values``, ``x_s`` and ``x_t``; the gradient with respect
    to ``values`` is the cost on the nonzero entries and zero on the others.
    """

    @staticmethod
    def forward(ctx, values: Tensor, x_s: Tensor, x_t: Tensor, rows: Tensor, cols: Tensor,
                pair: PairFunction) -> Tensor:
        """The expectation per slice, visiting the pairs in row blocks."""
        out, cost = _blocked_costs(values, x_s, x_t, rows, cols, pair)
        ctx.save_for_backward(values, x_s, x_t, rows, cols)
        ctx.pair, ctx.cost = pair, cost
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        """Gradients of the plan values and of both point sets, in row blocks."""
        values, x_s, x_t, rows, cols = ctx.saved_tensors
        L, n, W = values.shape
        need_v, need_s, need_t = ctx.needs_input_grad[:3]
        g = grad.view(L, 1, 1)
        g_values = _scaled_costs(ctx, g, lambda: _blocked_costs(values, x_s, x_t, rows, cols, ctx.pair)[1]) \
            if need_v else None
        g_s = torch.zeros_like(x_s) if need_s else None
        g_t = torch.zeros_like(x_t) if need_t else None
        if not (need_s or need_t):
            return g_values, None, None, None, None, None
        for sl in row_blocks(L, n, W * x_s.shape[1], values.device):
            stored = values[:, sl] != 0
            r, c = rows[:, sl][stored], cols[:, sl][stored]
            weight = (values[:, sl] * g)[stored]
            xs_b = x_s[r].requires_grad_(need_s)
            xt_b = x_t[c].requires_grad_(need_t)
            with torch.enable_grad():
                d = ctx.pair(xs_b, xt_b)
                wanted = [x for x, need in ((xs_b, need_s), (xt_b, need_t)) if need]
                grads = list(torch.autograd.grad((weight * d.to(values.dtype)).sum(), wanted))
            if need_s:
                g_s.index_add_(0, r, grads.pop(0))
            if need_t:
                g_t.index_add_(0, c, grads.pop(0))
        return g_values, g_s, g_t, None, None, None


class WindowExpectation(torch.autograd.Function):
    r""":math:`\sum_{ik} V_{lik}\, c(x^s_{\pi_l(i)}, x^t_{\sigma_l(s_{li} + k)})` per slice for a
    shipped cost (``kind`` of :func:`~glass_pyg.ot.native.window_costs`), by the compiled
    kernels: ``values`` ``(L, n, W)`` on the windows ``row_start`` of the sorted scores,
    ``perm_s``, ``perm_t`` the sorting permutations, points ``(n_s, d)``, ``(n_t, d)`` of the
    values' dtype. Differentiable once in the values and in both point sets.
    """

    @staticmethod
    def forward(ctx, values: Tensor, x_s: Tensor, x_t: Tensor, perm_s: Tensor, perm_t: Tensor,
                row_start: Tensor, kind: str) -> Tensor:
        """The expectation per slice; the window's costs are kept (the gradient for the values)."""
        xs, xt = _sorted_points(x_s, perm_s), _sorted_points(x_t, perm_t)
        cost = native.window_costs(xs, xt, row_start, values.shape[-1], kind)
        L = values.shape[0]
        out = torch.bmm(values.detach().reshape(L, 1, -1), cost.reshape(L, -1, 1)).view(L)
        ctx.save_for_backward(values, xs, xt, perm_s, perm_t, row_start)
        ctx.kind, ctx.shapes, ctx.cost = kind, (x_s.shape, x_t.shape), cost
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        """Gradients of the values (the costs, scaled) and of the points (one compiled pass)."""
        values, xs, xt, perm_s, perm_t, row_start = ctx.saved_tensors
        need_v, need_s, need_t = ctx.needs_input_grad[:3]
        W = values.shape[-1]
        g_values = _scaled_costs(ctx, grad.view(-1, 1, 1),
                                 lambda: native.window_costs(xs, xt, row_start, W, ctx.kind)) if need_v else None
        g_s = g_t = None
        if need_s or need_t:
            gxs, gxt = native.window_costs_grad(xs, xt, row_start, values.shape[-1], ctx.kind, values, grad)
            d = xs.shape[-1]
            if need_s:
                g_s = xs.new_zeros(ctx.shapes[0]).index_add_(0, perm_s.reshape(-1), gxs.reshape(-1, d))
            if need_t:
                g_t = xt.new_zeros(ctx.shapes[1]).index_add_(0, perm_t.reshape(-1), gxt.reshape(-1, d))
        return g_values, g_s, g_t, None, None, None, None


def _sorted_points(x: Tensor, perm: Tensor) -> Tensor:
    """``x[perm]`` ``(L, n, d)`` for ``x`` ``(n, d)`` and ``perm`` ``(L, n)``, by one ``index_select`` (a
    plain gather of rows; the advanced index is slower)."""
    return x.detach().index_select(0, perm.reshape(-1)).view(*perm.shape, x.shape[-1])


def _scaled_costs(ctx, g: Tensor, costs: Callable[[], Tensor]) -> Tensor:
    r"""The gradient with respect to the values, :math:`g_l D_{lik}`, scaled in the storage of the
    costs kept from the forward: a fresh plan-sized tensor is page-faulted in at the cost of
    several passes over it. The kept costs serve the first backward; another (``retain_graph``)
    forms them again with ``costs()``."""
    cost, ctx.cost = ctx.cost, None
    if cost is None:
        cost = costs()
    return cost.mul_(g)


GramFunction = Callable[[Tensor, Tensor, Tensor], Tensor]
_WINDOW_MAX_DIM = 4


def band_costs_from_gram(x_s: Tensor, x_t: Tensor, perm_s: Tensor, perm_t: Tensor, row_start: Tensor,
                         width: int, gram: GramFunction, block_rows: int = 128) -> Tensor:
    r"""Costs of every window entry of a band, ``(L, n, W)``, for a cost of the form
    :math:`c(x, y) = h(\lVert x\rVert^2, \lVert y\rVert^2, \langle x, y\rangle)`.

    In sorted coordinates a block of consecutive rows meets a short run of
    consecutive columns, so each block's inner products are one small matrix
    product, :math:`X_{\text{rows}} Y_{\text{run}}^\top`, from which the windows are
    read; the ``L n W`` pairs of ``d``-dimensional points are never gathered. A block whose run
    is more than twice as long as its rows and window (``m >> n``) takes the inner
    products of its window pairs instead. Points of at most four coordinates (the sphere's
    three) take their inner products coordinate by coordinate from windows of the sorted
    targets, which are rows of a strided view, in blocks of about ``2^17`` gathered values.
    ``perm_s``, ``perm_t``, ``row_start`` are those of :class:`~glass_pyg.ot.TransportPlan`;
    ``gram(sq_x, sq_y, inner)`` maps broadcastable tensors to costs. The cancellation in, e.g.,
    :math:`\lVert x\rVert^2 + \lVert y\rVert^2 - 2\langle x, y\rangle` costs about
    :math:`\epsilon \lVert x\rVert^2` absolute in the points' dtype. Not
    differentiable in the points (the caller checks that they need no gradient).
    """
    L, n = perm_s.shape
    out = x_s.new_empty(L, n, width)
    k = torch.arange(width, device=x_s.device)
    for sl in range(L):
        xs, xt = x_s[perm_s[sl]], x_t[perm_t[sl]]
        sq_s, sq_t = (xs * xs).sum(-1), (xt * xt).sum(-1)
        start = row_start[sl]
        if xs.shape[1] <= _WINDOW_MAX_DIM:
            # few coordinates: each one's windows are rows of a strided view (no pair is gathered)
            xt_c = xt.t().contiguous()
            sq_t2 = sq_t.unsqueeze(0)
            for blk in row_blocks(1, n, width * xs.shape[1], xs.device):
                st = start[blk].unsqueeze(0)
                inner = xs[blk, 0].unsqueeze(-1) * window_gather(xt_c[0:1], st, width)[0]
                for c in range(1, xs.shape[1]):
                    inner.addcmul_(xs[blk, c].unsqueeze(-1), window_gather(xt_c[c:c + 1], st, width)[0])
                out[sl, blk] = gram(sq_s[blk].unsqueeze(-1), window_gather(sq_t2, st, width)[0], inner)
            continue
        for i0 in range(0, n, block_rows):
            i1 = min(i0 + block_rows, n)
            st = start[i0:i1]
            c0, c1 = int(st.min()), int(st.max()) + width
            if c1 - c0 <= 2 * (i1 - i0 + width):
                idx = (st - c0).unsqueeze(-1) + k  # the windows inside the run: the cost on them only
                inner = (xs[i0:i1] @ xt[c0:c1].T).gather(1, idx)
                out[sl, i0:i1] = gram(sq_s[i0:i1].unsqueeze(-1), sq_t[c0:c1][idx], inner)
            else:
                cols = st.unsqueeze(-1) + k
                inner = (xs[i0:i1].unsqueeze(1) * xt[cols]).sum(-1)
                out[sl, i0:i1] = gram(sq_s[i0:i1].unsqueeze(-1), sq_t[cols], inner)
    return out


class BandCost(torch.autograd.Function):
    r"""The transport cost :math:`\sum_{ik} P_{lik} (s_{li} - t_{l,c_{lik}})^2` per slice of a banded plan.

    ``values`` ``(L, n, W)`` on the band of sorted scores ``ss`` ``(L, n)``,
    ``ts`` ``(L, m)``. Forward and backward are one compiled pass each on CPU
    (``native.row_cost``, ``native.row_cost_grad``), else visit the band in row
    blocks; they keep nothing plan-sized but the gradient with respect to the
    plan, so both are linear in the band: row slices taken under autograd would
    each form a full-size zero gradient (a quadratic backward).
    """

    @staticmethod
    def forward(ctx, values: Tensor, ss: Tensor, ts: Tensor, band: Band) -> Tensor:
        """The band's transport cost per slice (row blocks)."""
        ctx.save_for_backward(values, ss, ts)
        ctx.band = band
        L, n, W = values.shape
        if native.usable_plan(values, ss, ts):
            return native.row_cost(values, band.row_start, W, ss, ts, band.row_lo, band.row_hi).sum(-1)
        out = ss.new_zeros(L)
        for sl in row_blocks(L, n, W, values.device):
            diff = ss[:, sl].unsqueeze(-1) - window_gather(ts, band.row_start[:, sl], W)
            out += (values[:, sl] * diff * diff).sum((-2, -1))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        """Gradients of the plan values and of both score vectors."""
        values, ss, ts = ctx.saved_tensors
        band: Band = ctx.band
        need_v, need_s, need_t = ctx.needs_input_grad[:3]
        L, n, W = values.shape
        if native.usable_plan(values, ss, ts) and native.usable(ss, grad):
            g_v, g_s, g_t = native.row_cost_grad(values, band.row_start, W, ss, ts, band.row_lo, band.row_hi, grad)
            return g_v if need_v else None, g_s if need_s else None, g_t if need_t else None, None
        g = grad.view(L, 1, 1)
        g_v = torch.empty_like(values) if need_v else None
        g_s = torch.empty_like(ss) if need_s else None
        g_t = torch.zeros_like(ts) if need_t else None
        for sl in row_blocks(L, n, W, values.device):
            start = band.row_start[:, sl]
            diff = ss[:, sl].unsqueeze(-1) - window_gather(ts, start, W)
            if need_v:
                g_v[:, sl] = g * diff * diff
            if need_s or need_t:
                w = 2.0 * g * values[:, sl] * diff
                if need_s:
                    g_s[:, sl] = w.sum(-1)
                if need_t:
                    add_to_columns(g_t, -w, start)
        return g_v, g_s, g_t, None
