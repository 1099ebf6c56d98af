r"""Banded log-domain Sinkhorn for 1-D entropic optimal transport: the front door.

:func:`sinkhorn_banded` runs four stages on a small state object: prepare
(checks, sorting, the exact dual, the first band: :class:`_Problem`), solve on
the band (sweeps and Newton steps, widened until the certificate holds:
:class:`_Solution`), attach gradients (implicit or unrolled), finish (the
plan's statistics in the caller's order and dtype).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from . import _validation as V
from . import native
from ._band import Band, Staircase, band_logits, logit_floor, make_band, reference_dual, staircase
from ._band_memory import check_band_fits
from ._certificate import Reference, certify, extent, is_full, widen
from ._expectation import BandCost
from ._implicit import FixedPointPlan
from ._iterations import SolverState, first_sweep, newton, plan_row, result_plan_dtype, sweeps
from ._row_blocks import blockwise
from ._validation import ConvergenceWarning
from .plan import TransportPlan, inverse_permutation


def rank_gamma(gamma: Tensor, s: Tensor, t: Tensor) -> Tensor:
    r"""Score-unit :math:`\gamma` from a rank-relative one: :math:`\gamma\,\delta_s\delta_t`,
    :math:`\delta` the mean spacing of the sorted scores (1 where it vanishes).
    ``s`` ``(L, n)`` and ``t`` ``(L, m)`` in any order; returns ``(L,)``."""
    def spacing(x: Tensor) -> Tensor:
        n = x.shape[1]
        d = (x.amax(1) - x.amin(1)) / max(n - 1, 1)
        return torch.where(d > 0, d, torch.ones_like(d))
    return gamma * spacing(s) * spacing(t)


@dataclass(frozen=True)
class _Problem:
    r"""A solve's inputs after the checks: sorted scores and weights, the score-unit :math:`\gamma`
    and the exact 1-D dual they are measured against."""

    ss: Tensor  #: sorted source scores (L, n), compute dtype, differentiable
    ts: Tensor  #: sorted target scores (L, m)
    perm_s: Tensor  #: sorting permutations
    perm_t: Tensor
    a_s: Tensor  #: weights in sorted order
    b_s: Tensor
    gam: Tensor  #: (L,) gamma in squared score units
    ref: Reference  #: detached float64 copy with the exact dual
    stair: Staircase
    dtype: torch.dtype  #: compute dtype
    in_dtype: torch.dtype  #: the caller's dtype, for the results
    batched: bool  #: whether the caller passed (L, n) scores
    rank: bool  #: whether gamma is at rank temperature

    @property
    def m(self) -> int:
        """Number of target points."""
        return self.ts.shape[1]

    def logits(self, band: Band, s: Tensor | None = None, t: Tensor | None = None,
               gam: Tensor | None = None) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
        r"""What forms the row and the column layout's logits of ``band`` on demand (from the
        detached float64 scores unless others are given)."""
        r = self.ref
        s, t, gam = (r.s if s is None else s), (r.t if t is None else t), (r.gamma if gam is None else gam)
        return (lambda: band_logits(s, t, gam, band, r.f0, r.g0, self.dtype),
                lambda: band_logits(s, t, gam, band, r.f0, r.g0, self.dtype, "col"))

    def source(self) -> native.LogitReference:
        r"""The float64 reference the compiled column pass forms the logits from."""
        r = self.ref
        return native.LogitReference(r.s, r.t, r.f0, r.g0, r.gamma, logit_floor(self.dtype))


@dataclass
class _Solution:
    """Where the iterations on the band stopped."""

    st: SolverState
    phi0: Tensor  #: the starting corrections (for the unrolled gradient)
    psi0: Tensor
    err: Tensor  #: (L,) relative L1 marginal error
    omitted: Tensor  #: (L,) certified bound on the mass outside the band
    iterations: int
    newton_steps: int
    warm_started: Tensor  #: (L,) bool, whether the start was the caller's warm start
    plan_row_sum: Tensor | None = None  #: (L, n) the returned plan's row sums, where its pass formed them


def sinkhorn_banded(s: Tensor, t: Tensor, a: Tensor | None = None, b: Tensor | None = None,
                    gamma: float | Tensor = 0.1, max_iter: int = 200, tol: float = 1e-6,
                    band_eps: float = 1e-6, *, temperature: str = "absolute", grad: str = "implicit",
                    method: str = "newton", init: tuple[Tensor, Tensor] | None = None,
                    compute_dtype: torch.dtype | None = None, check_every: int = 10,
                    max_band_rounds: int = 8, newton_warmup: int = 2, max_newton: int = 30,
                    cg_tol: float | None = None, cg_max_iter: int = 500,
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
        init: warm start ``(f, g)`` in score units, original order. A slice takes it where one
            sweep from it leaves a smaller error than from the exact dual, and drops it again
            (starts cold) where Newton stalls from it; ``warm_started`` says where it was kept.
        compute_dtype: internal dtype, float64 by default for every input dtype (the
            results come back in the input's). ``torch.float32`` halves the band's memory,
            but its marginal error bottoms out near ``1e-5`` to ``1e-4`` at large ``n``,
            where Newton stalls and sweeps take over: slower than float64 at every measured
            size. Logits are always formed in float64 relative to the exact 1-D dual, so
            float32 iterations carry only corrections of order ``log n``.
        check_every: sweeps between host reads of the convergence test.
        max_band_rounds: most solves on a widened band before the certificate must hold.
        newton_warmup: Sinkhorn sweeps before the first Newton step (``method="newton"``).
        max_newton: most Newton steps per band.
        cg_tol: relative residual of the implicit backward's conjugate-gradient solve (Newton's
            steps set their own); default ``1e-13`` in float64, ``1e-5`` in float32. The solve
            also stops where rounding stops its progress (``1e-14`` to ``1e-11`` from ``n = 2^18``).
        cg_max_iter: most conjugate-gradient iterations per solve (the adjoint of skewed scores,
            whose weakly coupled tails make CG slow, takes about 80 at ``n = 65536``).
        warn: emit a :class:`ConvergenceWarning` when ``tol`` is not met.

    Returns:
        :class:`TransportPlan` with values ``(L, n, W)`` in sorted layout.

    Example:
        >>> import torch
        >>> from glass_pyg.ot import sinkhorn_banded
        >>> g = torch.Generator().manual_seed(0)
        >>> s, t = torch.randn(500, generator=g), torch.randn(400, generator=g) + 1.0
        >>> plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
        >>> bool(plan.converged.all()), tuple(plan.to_dense().shape)
        (True, (500, 400))
        >>> torch.allclose(plan.to_dense().sum(1), torch.full((500,), 1 / 500))
        True
    """
    V.check_choices(temperature=temperature, grad=grad, method=method)
    V.check_options(max_iter, tol, band_eps)
    p = _prepare(s, t, a, b, gamma, temperature, compute_dtype)
    if cg_tol is None:
        cg_tol = 1e-13 if p.dtype == torch.float64 else 1e-5
    with torch.no_grad():
        sol = _solve_on_band(p, init, max_iter, tol, band_eps, method, check_every, max_band_rounds,
                             newton_warmup, max_newton, cg_max_iter)
    values = _attach_gradients(p, sol, grad, max_iter, tol, check_every, cg_tol, cg_max_iter)
    return _finish(p, sol, values, tol, warn)


def _prepare(s: Tensor, t: Tensor, a: Tensor | None, b: Tensor | None, gamma: float | Tensor,
             temperature: str, compute_dtype: torch.dtype | None) -> _Problem:
    """Checks, the compute dtype, sorting, weights, the score-unit gamma and the exact dual."""
    s2, t2 = V.as_slices(s, "s"), V.as_slices(t, "t")
    if s2.shape[0] != t2.shape[0]:
        raise ValueError(f"s and t must have the same number of slices, got {s2.shape[0]} and {t2.shape[0]}")
    if s2.device != t2.device:
        raise ValueError(f"s and t are on different devices ({s2.device}, {t2.device})")
    batched = s.dim() == 2 or t.dim() == 2
    in_dtype = torch.promote_types(s2.dtype, t2.dtype)
    L = s2.shape[0]
    # float64 unless asked: float32 iterations bottom out near the tolerances users ask for, and
    # Newton then stalls (2-5x slower than float64 here); the results come back in the caller's dtype
    dt = torch.float64 if compute_dtype is None else compute_dtype
    a2, b2 = V.matched_weights(a, b, s2, t2, dt)
    gamma_t = V.gamma_per_slice(gamma, L, dt, s2.device)
    ss, perm_s = _stable_sort(s2.to(dt))
    ts, perm_t = _stable_sort(t2.to(dt))
    a_s, b_s = torch.gather(a2, 1, perm_s), torch.gather(b2, 1, perm_t)
    gam = rank_gamma(gamma_t, ss, ts) if temperature == "rank" else gamma_t
    with torch.no_grad():
        sd, td, gd = ss.detach().double(), ts.detach().double(), gam.detach().double()
        stair = staircase(a_s.detach().double(), b_s.detach().double())
        f0, g0 = reference_dual(sd, td, stair, gd)
    return _Problem(ss, ts, perm_s, perm_t, a_s, b_s, gam, Reference(sd, td, gd, f0, g0), stair, dt,
                    in_dtype, batched, temperature == "rank")


def _stable_sort(x: Tensor) -> tuple[Tensor, Tensor]:
    r"""``torch.sort(x, dim=-1, stable=True)`` with contiguous rows (the band passes and their
    gradients need them); by the compiled radix sort where it takes ``x`` (the values then
    gathered under autograd when ``x`` needs them)."""
    native_sort = native.sort_rows(x.detach())
    if native_sort is None:
        xs, perm = torch.sort(x, dim=-1, stable=True)  # keeps the input's strides
        return xs.contiguous(), perm.contiguous()
    xs, perm = native_sort
    return (torch.gather(x, 1, perm) if x.requires_grad else xs), perm


def _solve_on_band(p: _Problem, init: tuple[Tensor, Tensor] | None, max_iter: int, tol: float,
                   band_eps: float, method: str, check_every: int, max_band_rounds: int, newton_warmup: int,
                   max_newton: int, cg_max_iter: int) -> _Solution:
    """Sweeps (and Newton steps) on the band, widened until the omitted mass is certified below ``band_eps``."""
    L, n = p.ss.shape
    m, dt, ref = p.m, p.dtype, p.ref
    ad, bd = p.a_s.detach(), p.b_s.detach()
    log_a, log_b = ad.log(), bd.log()
    # the band comes from the exact dual (reduced cost below gamma * (log(1/eps) + log(max(n, m)) + 1));
    # the certificate widens it where the converged plan needs more
    log_eps = math.log(band_eps)
    band = make_band(*extent(ref, p.stair, m, log_eps - math.log(max(n, m)) - 1.0), m)
    plan_dtype = result_plan_dtype(log_a, log_b, dt, p.in_dtype)
    check_band_fits(band, plan_dtype or dt, ref.s, ref.t, ref.gamma, p.rank)
    st = SolverState(band, *p.logits(band), log_a, log_b, torch.zeros_like(ad).to(dt),
                     torch.zeros_like(bd).to(dt), source=p.source(), plan_dtype=plan_dtype)
    st.reserve_plan()
    first = None
    use = torch.zeros(L, dtype=torch.bool, device=ad.device)
    if init is not None:
        # a warm start helps only where it starts closer than the exact dual (small score moves at
        # absolute temperature; at rank temperature gamma follows the spacing and the dual moves by
        # many gammas): keep it per slice where one sweep from it leaves the smaller marginal error
        f_in = torch.gather(_check_init(init[0], L, n, "init[0]").double(), 1, p.perm_s)
        _check_init(init[1], L, m, "init[1]")  # g follows from f by a column update
        phi_w = ((f_in - ref.f0) / ref.gamma.unsqueeze(-1)).to(dt)
        cold, warm = first_sweep(st, st.phi), first_sweep(st, phi_w)
        use = torch.isfinite(warm[2]) & (warm[2] < cold[2])
        st.phi = torch.where(use.unsqueeze(-1), phi_w, st.phi)
        # the chosen start's sweep is the first of the warm-up
        first = tuple(torch.where(use.view(-1, *[1] * (c.dim() - 1)), w, c) for c, w in zip(cold, warm))
    phi0, psi0 = st.phi, st.psi
    total_iter = newton_steps = 0

    def warm_up_and_newton(first=None) -> Tensor:
        # the warm-up sweeps (all sweeps for method="sinkhorn"), then Newton's steps where needed
        nonlocal total_iter, newton_steps
        left = max(max_iter - total_iter, 0)
        it, err = sweeps(st, min(left, newton_warmup) if method == "newton" else left, tol, check_every, first)
        total_iter += it
        if method == "newton" and bool((err > tol).any()):
            k, _, err = newton(st, p.stair, max_newton, tol, err, cg_max_iter)
            newton_steps += k
            total_iter += k
        return err

    for _ in range(max_band_rounds):
        err = warm_up_and_newton(first)
        first = None
        stalled = use & (err > tol)
        if method == "newton" and bool(stalled.any()):
            # a warm start can lead where damped Newton stalls (its first sweep is no guide to
            # that: rank temperature, scores moved by 100 gamma): those slices start again cold
            use = use & ~stalled
            st.phi, st.psi, phi0, psi0 = (torch.where(stalled.unsqueeze(-1), torch.zeros_like(x), x)
                                          for x in (st.phi, st.psi, phi0, psi0))
            err = warm_up_and_newton()
        if method == "newton" and bool((err > tol).any()) and total_iter < max_iter:
            it, err = sweeps(st, max_iter - total_iter, tol, check_every)
            total_iter += it
        omitted, ok = certify(st, ref, bd)
        ok = ok & (omitted <= band_eps * bd.double().sum(-1))
        if bool(ok.all()) or is_full(band, m):
            break
        band = widen(band, *extent(ref, p.stair, m, log_eps, st.phi, st.psi, st.log_a, st.log_b), m)
        check_band_fits(band, plan_dtype or dt, ref.s, ref.t, ref.gamma, p.rank)
        st = SolverState(band, *p.logits(band), log_a, log_b, st.phi, st.psi, source=p.source(),
                         plan_dtype=plan_dtype)
        st.reserve_plan()
    if is_full(band, m):
        omitted = torch.zeros_like(omitted)
    return _Solution(st, phi0, psi0, err, omitted, total_iter, newton_steps, use)


def _attach_gradients(p: _Problem, sol: _Solution, grad: str, max_iter: int, tol: float, check_every: int,
                      cg_tol: float, cg_max_iter: int) -> Tensor:
    """The plan's band values ``(L, n, W)``, differentiable in the scores and the weights.

    ``implicit``: the converged values with an adjoint solve at the fixed point
    as their backward. ``unrolled``: the sweeps run again from the same start
    under autograd (``sol`` then holds their state and counts).
    """
    st = sol.st
    if grad == "implicit":
        # Newton's buffers go before the plan's (the peak); the plan takes the logits' storage where
        # they were formed: the state's logits are spent. Made from the kept exps, the plan is written
        # in the results' dtype (float32 results: half the memory, no cast), which the backward reads
        st.trim()
        sol.plan_row_sum = torch.empty_like(st.phi) if st.kept_for(st.phi) is not None else None
        values = plan_row(st, st.plan_buffer(), sol.plan_row_sum)
        st.row_logits = None
        st.workspace.clear()  # the kept exps, free now
        return FixedPointPlan.apply(p.ss, p.ts, p.gam, p.a_s, p.b_s, st.phi, st.psi, st.band, p.stair, values,
                                    p.ref, st.col_logits, cg_tol, cg_max_iter)
    with torch.enable_grad():
        ust = SolverState(st.band, *p.logits(st.band, p.ss, p.ts, p.gam), p.a_s.log(), p.b_s.log(),
                          sol.phi0.clone(), sol.psi0.clone())
        sol.iterations, sol.err = sweeps(ust, max_iter, tol, check_every)
        sol.newton_steps, sol.st = 0, ust
        return plan_row(ust)


def _check_init(x: Tensor, L: int, n: int, name: str) -> Tensor:
    x2 = V.as_slices(x, name).detach()
    if x2.shape != (L, n):
        raise ValueError(f"{name} must have shape ({n},) or ({L}, {n}), got {tuple(x.shape)}")
    return x2


def _finish(p: _Problem, sol: _Solution, values: Tensor, tol: float, warn: bool) -> TransportPlan:
    """The plan with its statistics, potentials in the caller's order, in the caller's dtype."""
    ss, ts, band, stair, st, ref = p.ss, p.ts, sol.st.band, p.stair, sol.st, p.ref
    L, n = ss.shape
    cost = BandCost.apply(values, ss, ts, band)
    inv_s, inv_t = inverse_permutation(p.perm_s), inverse_permutation(p.perm_t)
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
    direct = (sol.plan_row_sum.double() if sol.plan_row_sum is not None else
              blockwise(lambda sl: values[:, sl].detach().double().sum(-1), L, n, band.width, ss.device))
    err = torch.maximum(sol.err.double(), (direct - a_sorted).abs().sum(-1) / a_sorted.sum(-1)).to(sol.err.dtype)
    converged = err <= tol
    if warn and not bool(converged.all()):
        warnings.warn(f"sinkhorn_banded stopped after {sol.iterations} iterations with marginal error "
                      f"{float(err.max()):.3g} > tol={tol:g}; raise max_iter or gamma",
                      ConvergenceWarning, stacklevel=3)
    def cast(x: Tensor) -> Tensor:
        return x.to(p.in_dtype)
    return TransportPlan(values=cast(values), row_start=band.row_start, perm_s=p.perm_s, perm_t=p.perm_t,
                         num_targets=ts.shape[1], f=cast(f), g=cast(gg), cost=cast(cost),
                         gamma=cast(p.gam), iterations=sol.iterations, newton_steps=sol.newton_steps,
                         marginal_error=err.to(p.in_dtype), converged=converged,
                         omitted_mass=sol.omitted.to(p.in_dtype), band_halfwidth=halfwidth,
                         band_radius=radius.to(p.in_dtype), batched=p.batched, warm_started=sol.warm_started)
