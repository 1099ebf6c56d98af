r"""Dense log-domain Sinkhorn: the reference solver for any cost matrix."""
from __future__ import annotations

import warnings

import torch
from torch import Tensor

from . import _validation as V
from ._validation import ConvergenceWarning
from .plan import TransportPlan


def sinkhorn_dense(C: Tensor, a: Tensor | None = None, b: Tensor | None = None,
                   gamma: float | Tensor = 0.1, max_iter: int = 200, tol: float = 1e-6,
                   *, check_every: int = 10, warn: bool = True) -> TransportPlan:
    r"""Entropic OT on a dense cost ``C`` of shape ``(n, m)`` or ``(L, n, m)``.

    Log-domain updates :math:`f_i = \gamma\log a_i - \gamma\,\mathrm{LSE}_j((g_j - C_{ij})/\gamma)`
    and the symmetric one for :math:`g`; the kernel is never exponentiated on
    its own. Gradients flow by unrolling the iterations. Stops when the L1 row
    marginal error (relative to the mass) is below ``tol``, checked every
    ``check_every`` iterations.

    Args:
        C (Tensor): ``(n, m)`` or ``(L, n, m)`` cost.
        a (Tensor, optional): positive source weights (uniform when ``None``).
        b (Tensor, optional): positive target weights of the same mass.
        gamma (float or Tensor): :math:`\gamma > 0`, a float or ``(L,)``. Default ``0.1``.
        max_iter (int): most iterations. Default ``200``.
        tol (float): relative L1 marginal error to stop at. Default ``1e-6``.
        check_every (int): iterations between convergence checks. Default ``10``.
        warn (bool): emit a :class:`ConvergenceWarning` when ``tol`` is not met. Default ``True``.

    Returns:
        TransportPlan: the full plan (window width ``m``).

    Example:
        >>> import torch
        >>> from glass_pyg.ot import sinkhorn_dense
        >>> x, y = torch.linspace(0, 1, 5, dtype=torch.float64), torch.linspace(0, 1, 4, dtype=torch.float64)
        >>> plan = sinkhorn_dense((x[:, None] - y[None]) ** 2, gamma=0.01)
        >>> P = plan.to_dense()
        >>> P.sum(1)
        tensor([0.2000, 0.2000, 0.2000, 0.2000, 0.2000], dtype=torch.float64)
        >>> P.sum(0)
        tensor([0.2500, 0.2500, 0.2500, 0.2500], dtype=torch.float64)
    """
    if not isinstance(C, Tensor) or C.dim() not in (2, 3) or 0 in C.shape:
        raise ValueError(f"C must be a tensor of shape (n, m) or (L, n, m), got "
                         f"{tuple(C.shape) if isinstance(C, Tensor) else type(C).__name__}")
    if not torch.is_floating_point(C) or not bool(torch.isfinite(C).all()):
        raise ValueError("C must be a finite floating tensor")
    V.check_options(max_iter, tol)
    batched = C.dim() == 3
    C3 = C if batched else C.unsqueeze(0)
    L, n, m = C3.shape
    a2 = V.weights(a, C3[:, :, 0], "a")
    b2 = V.weights(b, C3[:, 0, :], "b")
    V.same_mass(a2, b2, 1e-5 if C.dtype != torch.float64 else 1e-9)
    gam = V.gamma_per_slice(gamma, L, C.dtype, C.device).reshape(L, 1, 1)
    theta = -C3 / gam
    log_a, log_b = a2.log(), b2.log()
    mass = a2.sum(-1)
    g = torch.zeros_like(log_b)
    f = log_a - torch.logsumexp(theta + g.unsqueeze(1), -1)
    err = torch.full_like(mass, float("inf"))
    it = 0
    while True:
        g = log_b - torch.logsumexp(theta + f.unsqueeze(-1), 1)
        f_next = log_a - torch.logsumexp(theta + g.unsqueeze(1), -1)
        err = (a2 * (-torch.expm1(f - f_next)).abs()).sum(-1) / mass
        it += 1
        if it >= max_iter or (it % check_every == 0 and bool((err <= tol).all())):
            break
        f = f_next
    P = torch.exp(theta + f.unsqueeze(-1) + g.unsqueeze(1))
    converged = err.detach() <= tol
    if warn and not bool(converged.all()):
        warnings.warn(f"sinkhorn_dense stopped after {it} iterations with marginal error "
                      f"{float(err.detach().max()):.3g} > tol={tol:g}", ConvergenceWarning, stacklevel=2)
    idx_n = torch.arange(n, device=C.device).expand(L, n)
    idx_m = torch.arange(m, device=C.device).expand(L, m)
    g_scale = gam.view(L, 1)
    zeros = torch.zeros(L, dtype=C.dtype, device=C.device)
    return TransportPlan(values=P, row_start=torch.zeros(L, n, dtype=torch.long, device=C.device),
                         perm_s=idx_n, perm_t=idx_m, num_targets=m, f=f * g_scale, g=g * g_scale,
                         cost=(P * C3).sum((-2, -1)), gamma=gam.view(L), iterations=it,
                         newton_steps=0, marginal_error=err.detach(), converged=converged,
                         omitted_mass=zeros, band_halfwidth=torch.full((L,), m, device=C.device),
                         band_radius=torch.full((L,), float("inf"), dtype=C.dtype, device=C.device),
                         batched=batched)
