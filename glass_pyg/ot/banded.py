r"""Banded log-domain Sinkhorn for 1-D entropic optimal transport."""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import native
from . import validation as V
from .band import Band, Staircase, band_logits, make_band, reference_dual, search_extent, staircase
from .blocks import blockwise
from .expectation import BandCost
from .implicit import FixedPointPlan
from .iterations import SolverState, col_update, newton, plan_row, row_error, row_update, sweeps
from .options import GRADS, METHODS, TEMPERATURES
from .plan import TransportPlan, inverse_permutation
from .validation import ConvergenceWarning

_AUTO_FLOAT64_ENTRIES = 1 << 16


@dataclass(frozen=True)
class _Reference:
    r"""Sorted scores in float64 with the exact dual they are measured against."""

    s: Tensor
    t: Tensor
    gamma: Tensor
    f0: Tensor
    g0: Tensor

    def log_kernel(self, phi: Tensor, psi: Tensor, j: Tensor) -> Tensor:
        r""":math:`\phi_i + \psi_j + \theta_{ij}` at column ``j[l, i]`` of every row (float64);
        with zero corrections it is minus the reduced cost over :math:`\gamma`."""
        tj = torch.gather(self.t, 1, j)
        theta = -((self.s - tj) ** 2 - self.f0 - torch.gather(self.g0, 1, j)) / self.gamma.unsqueeze(-1)
        return phi.double() + torch.gather(psi, 1, j).double() + theta

    def log_density(self, st: SolverState, j: Tensor) -> Tensor:
        r""":math:`\log(P_{ij}/(a_i b_j))` at column ``j[l, i]`` of every row (float64)."""
        return (self.log_kernel(st.phi, st.psi, j)
                - st.log_a.double() - torch.gather(st.log_b, 1, j).double())


def _extent(ref: _Reference, stair: Staircase, m: int, thr: float, phi: Tensor | None = None,
            psi: Tensor | None = None, log_a: Tensor | None = None,
            log_b: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""Columns around the staircase where :math:`\phi_i + \psi_j + \theta_{ij} - \log a_i
    - \log b_j \ge thr` (terms given as None are zero), per row."""
    def d(x: Tensor | None) -> Tensor | None:
        return None if x is None else x.detach().double()

    phi, psi, log_a, log_b = d(phi), d(psi), d(log_a), d(log_b)
    found = native.band_extent(ref.s, ref.t, ref.f0, ref.g0, ref.gamma, phi, psi, log_a, log_b, thr,
                               stair.lo, stair.hi)
    if found is not None:
        return found
    zr, zc = torch.zeros_like(ref.s), torch.zeros_like(ref.t)

    def pred(j: Tensor) -> Tensor:
        v = ref.log_kernel(zr if phi is None else phi, zc if psi is None else psi, j)
        v = v - (0.0 if log_a is None else log_a)
        return (v - (0.0 if log_b is None else torch.gather(log_b, 1, j))) >= thr

    return search_extent(pred, stair.lo, 0, m), search_extent(pred, stair.hi, m - 1, m)


def _certify(st: SolverState, ref: _Reference, b: Tensor) -> tuple[Tensor, Tensor]:
    r"""Bound on the mass outside the band, per slice, and whether it holds.

    After a column update each row of :math:`\log(P_{ij}/(a_i b_j))` is a
    concave function of :math:`t_j`; past a window edge where it does not
    increase, every omitted entry is at most the first omitted density times
    :math:`a_i b_j`. So row ``i`` omits at most
    :math:`\rho_{i,e+1}\, a_i \sum_{j>e} b_j` on the right (and likewise on the
    left). Where the edge is not decreasing the bound is void and the band
    must widen.
    """
    band = st.band
    t = ref.t
    m = t.shape[1]
    b = b.double()
    a = st.log_a.double().exp()
    start = band.row_lo
    end = band.row_hi
    idx = torch.arange(m, device=t.device).expand_as(t)
    new_group = torch.ones_like(t, dtype=torch.bool)
    new_group[:, 1:] = t[:, 1:] != t[:, :-1]
    group_first = torch.cummax(torch.where(new_group, idx, torch.zeros_like(idx)), -1).values
    last = torch.ones_like(new_group)
    last[:, :-1] = new_group[:, 1:]
    ends = torch.where(last, idx, torch.full_like(idx, m - 1))
    group_last = torch.flip(torch.cummin(torch.flip(ends, [-1]), -1).values, [-1])
    cum_b = torch.cumsum(b, -1)
    tail_right = cum_b[:, -1:] - torch.gather(cum_b, 1, end)
    tail_left = torch.gather(cum_b, 1, start) - torch.gather(b, 1, start)
    ok = torch.ones_like(a, dtype=torch.bool)
    bound = torch.zeros_like(a)
    # outside: first omitted column; inner: nearest kept column with a strictly
    # smaller (right edge) or larger (left edge) score, so ties cannot fool the test
    right_out = (end + 1).clamp(max=m - 1)
    right_in = torch.gather(group_first, 1, right_out) - 1
    left_out = (start - 1).clamp(min=0)
    left_in = torch.gather(group_last, 1, left_out) + 1
    for has, outside, inner, inside_ok, tail in (
            (end < m - 1, right_out, right_in.clamp(min=0), right_in >= start, tail_right),
            (start > 0, left_out, left_in.clamp(max=m - 1), left_in <= end, tail_left)):
        d_out = ref.log_density(st, outside)
        d_in = ref.log_density(st, inner)
        ok = ok & (~has | ((d_out <= d_in) & inside_ok))
        bound = bound + torch.where(has, d_out.exp() * a * tail, torch.zeros_like(a))
    return bound.sum(-1), ok.all(-1)


def _full(band: Band, m: int) -> bool:
    return bool(((band.row_lo == 0) & (band.row_hi == m - 1)).all())


def _widen(band: Band, lo: Tensor, hi: Tensor, m: int) -> Band:
    cur_lo = band.row_lo
    cur_hi = band.row_hi
    new_lo, new_hi = torch.minimum(lo, cur_lo), torch.maximum(hi, cur_hi)
    if bool((new_lo == cur_lo).all()) and bool((new_hi == cur_hi).all()):
        grow = max(1, band.width // 2)
        new_lo, new_hi = (cur_lo - grow).clamp(min=0), (cur_hi + grow).clamp(max=m - 1)
    return make_band(new_lo, new_hi, m)


def rank_gamma(gamma: Tensor, s: Tensor, t: Tensor) -> Tensor:
    r"""Score-unit :math:`\gamma` from a rank-relative one: :math:`\gamma\,\delta_s\delta_t`,
    :math:`\delta` the mean spacing of the sorted scores (1 where it vanishes).
    ``s`` ``(L, n)`` and ``t`` ``(L, m)`` in any order; returns ``(L,)``."""
    def spacing(x: Tensor) -> Tensor:
        n = x.shape[1]
        d = (x.amax(1) - x.amin(1)) / max(n - 1, 1)
        return torch.where(d > 0, d, torch.ones_like(d))
    return gamma * spacing(s) * spacing(t)


def sinkhorn_banded(s: Tensor, t: Tensor, a: Tensor | None = None, b: Tensor | None = None,
                    gamma: float | Tensor = 0.1, max_iter: int = 200, tol: float = 1e-6,
                    band_eps: float = 1e-6, *, temperature: str = "absolute", grad: str = "implicit",
                    method: str = "newton", init: tuple[Tensor, Tensor] | None = None,
                    compute_dtype: torch.dtype | None = None, check_every: int = 10,
                    max_band_rounds: int = 8, newton_warmup: int = 2, max_newton: int = 30,
                    cg_tol: float | None = None, cg_max_iter: int = 200,
                    warn: bool = True) -> TransportPlan:
    r"""Entropic 1-D optimal transport between scores ``s`` and ``t`` on a certified band.

    Solves, per slice,

    .. math::
        P = \arg\min_{P\mathbf 1 = a,\ P^\top\mathbf 1 = b}
        \sum_{ij} P_{ij}(s_i - t_j)^2 - \gamma H(P),

    in the log domain, on a band of the sorted plan around the monotone
    staircase. The band is widened until the mass it leaves out is provably
    below ``band_eps`` (relative to the total mass), so shifted or
    differently shaped score distributions never lose rows.

    Args:
        s: source scores ``(n,)`` or ``(L, n)``, any order.
        t: target scores ``(m,)`` or ``(L, m)``; ``n != m`` allowed.
        a, b: positive weights of the same total mass (uniform when ``None``).
        gamma: regularisation, a float or a ``(L,)`` tensor.
        max_iter: most Sinkhorn sweeps.
        tol: stop when the L1 marginal error (relative to the mass) is below.
        band_eps: certified bound on the omitted mass (relative).
        temperature: ``"absolute"`` (``gamma`` in squared score units) or
            ``"rank"`` (``gamma`` times the product of the mean spacings of the
            sorted scores, so the band holds a constant number of neighbours).
        grad: ``"implicit"`` (adjoint solve at the fixed point, O(nnz) memory)
            or ``"unrolled"`` (backpropagate through the Sinkhorn sweeps).
        method: ``"newton"`` (Sinkhorn warm-up, then damped Newton steps with
            a preconditioned CG solve) or ``"sinkhorn"`` (sweeps only).
        init: warm start ``(f, g)`` in score units, original order.
        compute_dtype: internal dtype. By default float64, except for float32
            inputs with ``L (n + m) > 65536`` and ``tol >= 1e-4`` (float32
            marginal errors bottom out near 1e-5 to 1e-4 at large n). Logits are always
            formed in float64 relative to the exact 1-D dual, so float32
            iterations carry only corrections of order ``log n``.
        check_every: sweeps between host reads of the convergence test.

    Returns:
        :class:`TransportPlan` with values ``(L, n, W)`` in sorted layout.
    """
    if temperature not in TEMPERATURES:
        raise ValueError(f"temperature must be one of {TEMPERATURES}, got {temperature!r}")
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    V.check_options(max_iter, tol, band_eps)
    batched = s.dim() == 2 if isinstance(s, Tensor) else False
    s2, t2 = V.as_slices(s, "s"), V.as_slices(t, "t")
    if s2.shape[0] != t2.shape[0]:
        raise ValueError(f"s and t must have the same number of slices, got {s2.shape[0]} and {t2.shape[0]}")
    if s2.device != t2.device:
        raise ValueError(f"s and t are on different devices ({s2.device}, {t2.device})")
    batched = batched or t.dim() == 2
    in_dtype = torch.promote_types(s2.dtype, t2.dtype)
    L, n = s2.shape
    m = t2.shape[1]
    if compute_dtype is None:
        # float32 marginals bottom out near 1e-5..1e-4: keep float64 unless the
        # problem is large and the tolerance is one float32 can meet.
        small = L * (n + m) <= _AUTO_FLOAT64_ENTRIES
        compute_dtype = in_dtype if (in_dtype == torch.float64 or (not small and tol >= 1e-4)) else torch.float64
    dt = compute_dtype
    a2, b2 = V.matched_weights(a, b, s2, t2, dt)
    gamma_t = V.gamma_per_slice(gamma, L, dt, s2.device)

    s2, t2 = s2.to(dt), t2.to(dt)
    ss, perm_s = torch.sort(s2, dim=-1, stable=True)
    ts, perm_t = torch.sort(t2, dim=-1, stable=True)
    # sort keeps the input's strides; the band passes and their gradients need rows contiguous
    ss, ts, perm_s, perm_t = ss.contiguous(), ts.contiguous(), perm_s.contiguous(), perm_t.contiguous()
    a_s, b_s = torch.gather(a2, 1, perm_s), torch.gather(b2, 1, perm_t)
    gam = rank_gamma(gamma_t, ss, ts) if temperature == "rank" else gamma_t
    if cg_tol is None:
        cg_tol = 1e-11 if dt == torch.float64 else 1e-5

    log_eps = math.log(band_eps)
    with torch.no_grad():
        sd, td, gd = ss.detach().double(), ts.detach().double(), gam.detach().double()
        ad, bd = a_s.detach(), b_s.detach()
        stair = staircase(ad.double(), bd.double())
        f0, g0 = reference_dual(sd, td, stair, gd)
        ref = _Reference(sd, td, gd, f0, g0)
        log_a, log_b = ad.log(), bd.log()
        # the band comes from the exact dual (reduced cost below gamma * (log(1/eps) + log(max(n, m)) + 1));
        # the certificate below widens it where the converged plan needs more
        zeros_r, zeros_c = torch.zeros_like(ad), torch.zeros_like(bd)
        thr = log_eps - math.log(max(n, m)) - 1.0
        band = make_band(*_extent(ref, stair, m, thr), m)
        st = SolverState(band, *_logits(sd, td, gd, band, f0, g0, dt), log_a, log_b,
                         zeros_r.to(dt), zeros_c.to(dt))
        if init is not None:
            # a warm start helps only while the scores have moved less than the band: keep it per
            # slice where one sweep from it leaves a smaller marginal error than one from the exact dual
            f_in = torch.gather(_check_init(init[0], L, n, "init[0]").double(), 1, perm_s)
            _check_init(init[1], L, m, "init[1]")  # g follows from f by a column update
            phi_w = ((f_in - f0) / gd.unsqueeze(-1)).to(dt)
            e_cold = row_error(st, st.phi, row_update(st, col_update(st, st.phi)))
            e_warm = row_error(st, phi_w, row_update(st, col_update(st, phi_w)))
            use = (torch.isfinite(e_warm) & (e_warm < e_cold)).unsqueeze(-1)
            st.phi = torch.where(use, phi_w, st.phi)
        phi0, psi0 = st.phi, st.psi
        total_iter = newton_steps = 0
        for _ in range(max_band_rounds):
            left = max(max_iter - total_iter, 0)
            warm = min(left, newton_warmup) if method == "newton" else left
            it, err = sweeps(st, warm, tol, check_every)
            total_iter += it
            if method == "newton" and bool((err > tol).any()):
                k, _, err = newton(st, stair, max_newton, tol, err, cg_max_iter)
                newton_steps += k
                total_iter += k
                if bool((err > tol).any()) and total_iter < max_iter:
                    it, err = sweeps(st, max_iter - total_iter, tol, check_every)
                    total_iter += it
            omitted, ok = _certify(st, ref, bd)
            ok = ok & (omitted <= band_eps * bd.double().sum(-1))
            if bool(ok.all()) or _full(band, m):
                break
            band = _widen(band, *_extent(ref, stair, m, log_eps, st.phi, st.psi, st.log_a, st.log_b), m)
            st = SolverState(band, *_logits(sd, td, gd, band, f0, g0, dt), log_a, log_b, st.phi, st.psi)
        if _full(band, m):
            omitted = torch.zeros_like(omitted)

    if grad == "implicit":
        buf = st.workspace.pop("row", None)  # Newton's plan buffer, free now
        buf = buf if buf is not None and buf.shape == st.theta_row.shape else None
        values = FixedPointPlan.apply(ss, ts, gam, a_s, b_s, st.phi, st.psi, band, stair,
                                      st.theta_row, st.col_logits, cg_tol, cg_max_iter, buf)
    else:
        with torch.enable_grad():
            ust = SolverState(band, *_logits(ss, ts, gam, band, f0, g0, dt), a_s.log(), b_s.log(),
                              phi0.clone(), psi0.clone())
            it, err = sweeps(ust, max_iter, tol, check_every)
            total_iter, newton_steps = it, 0
            values = plan_row(ust)
            st = ust
    return _finish(values, ss, ts, gam, band, stair, st, ref, perm_s, perm_t, err, omitted, tol,
                   total_iter, newton_steps, in_dtype, batched, warn)


def _logits(s: Tensor, t: Tensor, g: Tensor, band: Band, f0: Tensor, g0: Tensor,
            dt: torch.dtype) -> tuple[Tensor, Callable[[], Tensor]]:
    r"""Row logits now, and the column layout's on demand."""
    return band_logits(s, t, g, band, f0, g0, dt), lambda: band_logits(s, t, g, band, f0, g0, dt, "col")


def _check_init(x: Tensor, L: int, n: int, name: str) -> Tensor:
    x2 = V.as_slices(x, name).detach()
    if x2.shape != (L, n):
        raise ValueError(f"{name} must have shape ({n},) or ({L}, {n}), got {tuple(x.shape)}")
    return x2


def _finish(values, ss, ts, gam, band, stair, st, ref, perm_s, perm_t, err, omitted, tol,
            total_iter, newton_steps, in_dtype, batched, warn) -> TransportPlan:
    L, n = ss.shape
    cost = BandCost.apply(values, ss, ts, band)
    inv_s, inv_t = inverse_permutation(perm_s), inverse_permutation(perm_t)
    g = ref.gamma.unsqueeze(-1)
    f = torch.gather(st.phi.detach().double() * g + ref.f0, 1, inv_s)
    gg = torch.gather(st.psi.detach().double() * g + ref.g0, 1, inv_t)
    end = band.row_hi
    halfwidth = torch.maximum(stair.lo - band.row_lo, end - stair.hi).amax(-1)
    td = ts.detach()
    partner = torch.gather(td, 1, stair.lo)
    radius = torch.maximum((torch.gather(td, 1, end) - partner).abs(),
                           (partner - torch.gather(td, 1, band.row_lo)).abs()).amax(-1)
    # the solver's error comes from its potentials; the plan's own row sums are the truth (columns are
    # exact after the last column update): report the larger, so no plan is called converged wrongly
    a_sorted = st.log_a.detach().exp().double()
    direct = blockwise(lambda sl: values[:, sl].detach().double().sum(-1), L, n, band.width, ss.device)
    err = torch.maximum(err.double(), (direct - a_sorted).abs().sum(-1) / a_sorted.sum(-1)).to(err.dtype)
    converged = err <= tol
    if warn and not bool(converged.all()):
        warnings.warn(f"sinkhorn_banded stopped after {total_iter} iterations with marginal error "
                      f"{float(err.max()):.3g} > tol={tol:g}; raise max_iter or gamma",
                      ConvergenceWarning, stacklevel=3)
    def cast(x: Tensor) -> Tensor:
        return x.to(in_dtype)
    return TransportPlan(values=cast(values), row_start=band.row_start, perm_s=perm_s, perm_t=perm_t,
                         num_targets=ts.shape[1], f=cast(f), g=cast(gg), cost=cast(cost),
                         gamma=cast(gam), iterations=total_iter, newton_steps=newton_steps,
                         marginal_error=err.to(in_dtype), converged=converged,
                         omitted_mass=omitted.to(in_dtype), band_halfwidth=halfwidth,
                         band_radius=radius.to(in_dtype), batched=batched)
