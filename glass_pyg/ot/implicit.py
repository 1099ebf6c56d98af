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

import torch
from torch import Tensor

from .band import Band, Staircase, window_gather
from .laplacian import band_operator, solve_laplacian


class FixedPointPlan(torch.autograd.Function):
    """Plan entries on the band from converged potentials; implicit backward.

    ``theta_row``/``theta_col`` are the solver's logits of ``s, t, gamma`` on the
    band (constants here; the backward differentiates the logits itself).
    """

    @staticmethod
    def forward(ctx, s: Tensor, t: Tensor, gamma: Tensor, a: Tensor, b: Tensor,
                phi: Tensor, psi: Tensor, band: Band, stair: Staircase,
                theta_row: Tensor, theta_col: Tensor, cg_tol: float, cg_max_iter: int) -> Tensor:
        p_row = torch.exp(phi.unsqueeze(-1) + window_gather(psi, band.row_start, band.width) + theta_row)
        p_col = torch.exp(psi.unsqueeze(-1) + window_gather(phi, band.col_start, band.col_width) + theta_col)
        ctx.save_for_backward(s, t, gamma, p_row, p_col, theta_row)
        ctx.band, ctx.stair = band, stair
        ctx.cg = (cg_tol, cg_max_iter)
        return p_row

    @staticmethod
    def backward(ctx, grad: Tensor):
        s, t, gamma, p_row, p_col, theta_row = ctx.saved_tensors
        band: Band = ctx.band
        pg = p_row * grad
        q_r = pg.sum(-1)
        q_c = band.row_to_col(pg).sum(-1)
        op = band_operator(band, ctx.stair, p_row, p_col)
        u, v_neg, _ = solve_laplacian(op, q_r, -q_c, ctx.cg[0], ctx.cg[1])
        v = -v_neg
        d_theta = p_row * (grad - u.unsqueeze(-1) - window_gather(v, band.row_start, band.width))
        g = gamma.view(-1, 1, 1)
        t_win = window_gather(t, band.row_start, band.width)
        e = d_theta * 2.0 * (s.unsqueeze(-1) - t_win) / g  # dl/dt_j contributions
        grad_s = -e.sum(-1) if ctx.needs_input_grad[0] else None
        grad_t = band.row_to_col(e).sum(-1) if ctx.needs_input_grad[1] else None
        grad_gamma = (-(d_theta * theta_row).sum((-2, -1)) / gamma) if ctx.needs_input_grad[2] else None
        grad_a = u if ctx.needs_input_grad[3] else None
        grad_b = v if ctx.needs_input_grad[4] else None
        return grad_s, grad_t, grad_gamma, grad_a, grad_b, None, None, None, None, None, None, None, None
