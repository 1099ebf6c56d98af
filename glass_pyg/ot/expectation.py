r"""Lifted expectations :math:`\langle P, D\rangle` of a cost built from per-point geometry.

For :math:`D_{ij} = c(x_i, y_j)` the expectation touches ``L n W`` pairs of
``d``-dimensional points. Gathering them all at once (and keeping them for
the backward) costs ``L n W d`` values of memory traffic twice over; here the
pairs are visited in row blocks, and only plan-shaped tensors are stored
whole: the cost values, kept from the forward (they are the gradient with
respect to the plan), and the points' gradients, which the backward forms in
row blocks again, and only when the points require them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .blocks import row_blocks

PairFunction = Callable[[Tensor, Tensor], Tensor]


class BlockedExpectation(torch.autograd.Function):
    r""":math:`\sum_{ik} V_{lik}\, c(x_{r_{lik}}, y_{c_{lik}})` per slice ``l``, in row blocks.

    ``values``, ``rows``, ``cols`` are ``(L, n, W)``; ``x_s`` ``(n_s, d)``, ``x_t``
    ``(n_t, d)``; ``pair(x, y)`` maps ``(k, d), (k, d)`` to ``(k,)``.
    Differentiable once in ``values``, ``x_s`` and ``x_t``.
    """

    @staticmethod
    def forward(ctx, values: Tensor, x_s: Tensor, x_t: Tensor, rows: Tensor, cols: Tensor,
                pair: PairFunction) -> Tensor:
        L, n, W = values.shape
        out = values.new_zeros(L)
        cost = torch.empty_like(values)
        for sl in row_blocks(L, n, W * x_s.shape[1], values.device):
            cost[:, sl] = pair(x_s[rows[:, sl].reshape(-1)], x_t[cols[:, sl].reshape(-1)]).view(L, -1, W)
            out += (values[:, sl] * cost[:, sl]).sum((-2, -1))
        ctx.save_for_backward(values, x_s, x_t, rows, cols, cost)
        ctx.pair = pair
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        values, x_s, x_t, rows, cols, cost = ctx.saved_tensors
        L, n, W = values.shape
        need_v, need_s, need_t = ctx.needs_input_grad[:3]
        g = grad.view(L, 1, 1)
        g_values = cost * g if need_v else None
        g_s = torch.zeros_like(x_s) if need_s else None
        g_t = torch.zeros_like(x_t) if need_t else None
        if not (need_s or need_t):
            return g_values, None, None, None, None, None
        for sl in row_blocks(L, n, W * x_s.shape[1], values.device):
            r, c = rows[:, sl].reshape(-1), cols[:, sl].reshape(-1)
            xs_b = x_s[r].requires_grad_(need_s)
            xt_b = x_t[c].requires_grad_(need_t)
            with torch.enable_grad():
                d = ctx.pair(xs_b, xt_b).view(L, -1, W)
                wanted = [x for x, need in ((xs_b, need_s), (xt_b, need_t)) if need]
                grads = list(torch.autograd.grad((values[:, sl] * g * d.to(values.dtype)).sum(), wanted))
            if need_s:
                g_s.index_add_(0, r, grads.pop(0))
            if need_t:
                g_t.index_add_(0, c, grads.pop(0))
        return g_values, g_s, g_t, None, None, None
