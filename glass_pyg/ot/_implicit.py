r"""Implicit differentiation of the banded plan at its fixed point.

With :math:`P_{ij} = \exp(\phi_i + \psi_j + \theta_{ij})` and the marginal
constraints :math:`P\mathbf 1 = a`, :math:`P^\top\mathbf 1 = b`, an upstream
gradient :math:`G = \partial\ell/\partial P` pulls back as

.. math::
    \frac{\partial \ell}{\partial \theta_{ij}} = P_{ij}(G_{ij} - u_i - v_j),
    \qquad \frac{\partial \ell}{\partial a_i} = u_i,
    \qquad \frac{\partial \ell}{\partial b_j} = v_j,

where :math:`(u, -v)` solves :math:`\mathcal{L}(u, -v) = ((P\odot G)\mathbf 1,
-(P\odot G)^\top\mathbf 1)` with the bipartite Laplacian of
:mod:`.laplacian`. Memory is O(nnz) whatever the number of iterations.
Since :math:`\theta_{ij} = -(s_i - t_j)^2/\gamma` the chain rule to
:math:`s, t, \gamma` is a row sum, a column sum and a full sum.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import native
from ._band import Band, Staircase, logit_floor, row_logits
from ._iterations import exp_windows
from ._laplacian import band_operator, solve_laplacian
from ._row_blocks import add_to_columns, row_blocks, window_gather
from ._validation import first_order_only as _first_order_only

if TYPE_CHECKING:
    from ._certificate import Reference


class FixedPointPlan(torch.autograd.Function):
    """Plan entries on the band from converged potentials; implicit backward.

    ``p_row`` are the converged plan's values on the band's rows, written by the
    solver over its logits of ``s, t, gamma`` (a second band-sized buffer would
    cost as much to fault in as the pass itself); the backward differentiates
    the logits, which it forms again from ``ref``, the float64 scores and
    reference dual they were formed from (:func:`~glass_pyg.ot._band.band_logits`),
    and ``col_logits()`` builds their column layout where the torch backward
    needs it.
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, gamma: Tensor, a: Tensor, b: Tensor,
                phi: Tensor, psi: Tensor, band: Band, stair: Staircase,
                p_row: Tensor, ref: Reference, col_logits, cg_tol: float, cg_max_iter: int) -> Tensor:
        """The plan values of the converged potentials, saved for the adjoint solve."""
        ctx.save_for_backward(s, t, gamma, p_row, phi, psi)
        ctx.band, ctx.stair, ctx.ref, ctx.col_logits = band, stair, ref, col_logits
        ctx.cg = (cg_tol, cg_max_iter)
        return p_row

    @staticmethod
    def backward(ctx, grad: Tensor):
        """The implicit gradient: one adjoint solve at the fixed point."""
        _first_order_only()
        s, t, gamma, p_row, phi, psi = ctx.saved_tensors
        band: Band = ctx.band
        ref = ctx.ref
        # the plan may be float32 in a float64 solve (float32 results): the compiled passes then
        # compute in float64, and the operator is the Laplacian of its rounded entries
        fast = native.usable_plan(p_row, s, t, gamma) and native.usable(p_row, grad)
        dt = s.dtype
        if fast:
            grad = grad.contiguous()
        else:
            p_row, grad = p_row.to(dt), grad.to(dt)
        q_r, q_c = (native.product_sums(p_row, grad, band.row_start, band.width, psi.shape[1], band.row_lo,
                                        band.row_hi, dt) if fast else _product_sums(p_row, grad, band))
        if fast:
            # the adjoint's products read the plan's extents, compact (half the padded rows, read
            # whole): a copy that takes a pass and pays for itself in the first two products. Entries
            # whose products would go subnormal are zeros (below sqrt(tiny), or a narrower plan's tiny)
            offsets = native.compact_offsets(band.row_lo, band.row_hi)
            tiny = torch.finfo(p_row.dtype).tiny ** (0.5 if p_row.dtype == dt else 1.0)
            compact = native.compact_rows(p_row, band.row_start, band.width, band.row_lo, band.row_hi, offsets, tiny)
            op = band_operator(band, ctx.stair, compact, None, offsets=offsets, dtype=dt)
        else:  # the column layout where torch needs it
            op = band_operator(band, ctx.stair, p_row,
                               lambda: exp_windows(psi, phi, band.col_start, band.col_width, ctx.col_logits()))
        u, v_neg, _ = solve_laplacian(op, q_r, -q_c, ctx.cg[0], ctx.cg[1])
        v = -v_neg
        if fast:
            grad_s, grad_t, grad_gamma = native.implicit_grad(
                p_row, grad, band.row_start, band.width, band.row_lo, band.row_hi, u, v, s, t, gamma,
                ref.s, ref.t, ref.f0, ref.g0, ref.gamma, logit_floor(dt))
        else:
            grad_s, grad_t, grad_gamma = _score_grads(p_row, grad, u, v, s, t, gamma, band, ref)
        return (grad_s if ctx.needs_input_grad[0] else None, grad_t,
                grad_gamma if ctx.needs_input_grad[2] else None,
                u if ctx.needs_input_grad[3] else None, v if ctx.needs_input_grad[4] else None,
                None, None, None, None, None, None, None, None, None)


def _product_sums(p_row: Tensor, grad: Tensor, band: Band) -> tuple[Tensor, Tensor]:
    r"""Row and column sums of :math:`P \odot G`, in row blocks."""
    L, n, m = band.shape
    q_r = p_row.new_empty(L, n)
    q_c = p_row.new_zeros(L, m)
    for sl in row_blocks(L, n, band.width, p_row.device):
        pg = p_row[:, sl] * grad[:, sl]
        q_r[:, sl] = pg.sum(-1)
        add_to_columns(q_c, pg, band.row_start[:, sl])
    return q_r, q_c


def _score_grads(p_row: Tensor, grad: Tensor, u: Tensor, v: Tensor, s: Tensor, t: Tensor, gamma: Tensor,
                 band: Band, ref: Reference) -> tuple[Tensor, Tensor, Tensor]:
    r"""Gradients of the scores and of :math:`\gamma` from :math:`D = P \odot (G - u_i - v_j)`, in row blocks."""
    L, n, m = band.shape
    W = band.width
    g = gamma.view(-1, 1, 1)
    grad_s = torch.empty_like(s)
    grad_t = torch.zeros_like(t)
    grad_gamma = torch.zeros_like(gamma)
    for sl in row_blocks(L, n, W, p_row.device):
        start = band.row_start[:, sl]
        d_theta = p_row[:, sl] * (grad[:, sl] - u[:, sl].unsqueeze(-1) - window_gather(v, start, W))
        e = d_theta * 2.0 * (s[:, sl].unsqueeze(-1) - window_gather(t, start, W)) / g  # dl/dt_j terms
        grad_s[:, sl] = -e.sum(-1)
        add_to_columns(grad_t, e, start)
        theta = row_logits(ref.s, ref.t, ref.gamma, band, ref.f0, ref.g0, p_row.dtype, sl)
        grad_gamma -= (d_theta * theta).sum((-2, -1)) / gamma
    return grad_s, grad_t, grad_gamma
