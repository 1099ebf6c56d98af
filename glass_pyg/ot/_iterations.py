r"""Iterations of the banded log-domain solver.

Potentials are kept in units of :math:`\gamma` (:math:`\phi = f/\gamma`,
:math:`\psi = g/\gamma`); logits are :math:`\theta_{ij} = -C_{ij}/\gamma`, so
:math:`P_{ij} = \exp(\phi_i + \psi_j + \theta_{ij})`. A sweep is one row update
followed by one column update, each a gather and a ``logsumexp`` over the
window. After a sweep the column marginals are exact, so the L1 error of the
row marginals is the marginal error.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor

from . import native
from ._band import Band, Staircase
from ._laplacian import band_operator, solve_newton_system
from ._row_blocks import blockwise, window_gather, window_inside


@dataclass
class SolverState:
    r"""Potentials on a band, with the logits they are paired with.

    The row layout of the logits is formed on first use (``row_logits`` may be the function that
    forms it), and with a ``source`` it is seldom needed: a sweep's column pass forms each logit
    from the float64 reference on the fly (``native.col_sums_kept``), and Newton's plans and the
    final plan come from the kept exps; only fallbacks (exact log-sum-exps, the torch route) read
    the tensor. The column layout is built on first use (``col_logits``): the compiled kernels
    reduce over columns from the row layout and never need it.
    """

    band: Band
    row_logits: Tensor | Callable[[], Tensor] | None  # None: spent on the plan
    col_logits: Callable[[], Tensor]
    log_a: Tensor
    log_b: Tensor
    phi: Tensor
    psi: Tensor
    # band-sized buffers reused by successive plans (a fresh multi-megabyte
    # tensor is page-faulted in at about the cost of two passes over it), and
    # whose column exps the kept buffer holds (kept_for)
    workspace: dict[str, Tensor] = field(default_factory=dict)
    #: the float64 reference the compiled column pass forms the logits from (None: it reads them)
    source: native.LogitReference | None = None
    #: the dtype of the final plan where the compiled kernels make it from the kept exps (None: the
    #: potentials'); float32 for float32 results of a float64 solve (:func:`result_plan_dtype`)
    plan_dtype: torch.dtype | None = None

    @property
    def theta_row(self) -> Tensor:
        """The row-major logits of the band ``(L, n, W)`` (formed once, then reused)."""
        if callable(self.row_logits):
            self.row_logits = self.row_logits()
        return self.row_logits

    def reserve_plan(self) -> None:
        r"""Allocate the final plan's buffer now, to be written last (:meth:`plan_buffer`), where the
        compiled kernels form the logits on the fly: pages not yet written take no memory, and an
        allocator that keeps freed memory for reuse (the command line's) then places it before the
        solve's other buffers, not after them. (Elsewhere the plan takes the logits' storage.)"""
        if self.source is not None and self.native():
            self.workspace["plan"] = _band_sized(self.band, self.phi, self.plan_dtype)

    def plan_buffer(self) -> Tensor:
        r"""Where the final plan goes ``(L, n, W)``: the row logits' own storage where they are formed
        or the plan needs them (no kept exps of ``phi``), else the reserved buffer or a fresh one of
        ``plan_dtype``; the logits are spent once the plan is written there."""
        if callable(self.row_logits) and self.kept_for(self.phi) is not None:
            plan = self.workspace.pop("plan", None)
            return _band_sized(self.band, self.phi, self.plan_dtype) if plan is None else plan
        return self.theta_row

    def trim(self) -> None:
        """Drop the workspace's buffers but the kept exps (the plan of ``phi`` is made from them) and
        the plan's reserved buffer."""
        kept = {k: v for k, v in self.workspace.items() if k in ("kept", "kept_phi", "kept_c", "offsets", "plan")}
        self.workspace.clear()
        self.workspace.update(kept)

    def kept_for(self, phi: Tensor) -> Tensor | None:
        r"""The column factors :math:`c` when the workspace's kept buffer holds the column exps of
        ``phi`` (this very tensor) and the compiled kernels run; None otherwise. The plan of ``phi``
        and its column update is then the kept exps times :math:`c` (``native.kept_plan``)."""
        kept = self.workspace.get("kept")
        ok = self.workspace.get("kept_phi") is phi and kept is not None and kept.dtype == phi.dtype and self.native(phi)
        return self.workspace["kept_c"] if ok else None

    def keep(self, phi: Tensor | None, c: Tensor | None = None) -> None:
        """Record whose column exps the kept buffer holds (None: being rewritten)."""
        if phi is None:
            self.workspace.pop("kept_phi", None)
            self.workspace.pop("kept_c", None)
        else:
            self.workspace["kept_phi"], self.workspace["kept_c"] = phi, c

    @property
    def theta_col(self) -> Tensor:
        """The column-major logits of the band (formed once, then reused)."""
        if "theta_col" not in self.workspace:
            self.workspace["theta_col"] = self.col_logits()
        return self.workspace["theta_col"]

    def buffer(self, name: str, like: Tensor) -> Tensor:
        """A reusable workspace tensor shaped like ``like`` (its contents are not cleared)."""
        buf = self.workspace.get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.workspace[name] = torch.empty_like(like)
        return buf

    def compact_buffer(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        r"""A compact plan buffer of ``dtype`` (the extents only) and its offsets."""
        offsets = self._offsets()
        size = int(offsets[-1])
        buf = self.workspace.get("compact")
        if buf is None or buf.numel() != size or buf.dtype != dtype:
            buf = self.workspace["compact"] = torch.empty(size, dtype=dtype, device=offsets.device)
        return buf, offsets

    def kept_buffer(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        r"""A compact band of ``dtype`` for a sweep's column exps, and its offsets."""
        offsets = self._offsets()
        buf = self.workspace.get("kept")
        if buf is None or buf.numel() != int(offsets[-1]) or buf.dtype != dtype:
            buf = self.workspace["kept"] = torch.empty(int(offsets[-1]), dtype=dtype, device=offsets.device)
        return buf, offsets

    def _offsets(self) -> Tensor:
        if "offsets" not in self.workspace:
            self.workspace["offsets"] = native.compact_offsets(self.band.row_lo, self.band.row_hi)
        return self.workspace["offsets"]

    def native(self, *x: Tensor) -> bool:
        r"""Whether the compiled kernels take this state's passes (with these vectors)."""
        return native.usable(self.phi if self.source is not None else self.theta_row, *x)


def _band_sized(band: Band, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    L, n, _ = band.shape
    return torch.empty(L, n, band.width, dtype=like.dtype if dtype is None else dtype, device=like.device)


# log of the smallest product min(a) min(b) for which a float32 plan keeps entries down to 1e-22 of
# a_i b_j in float32's normal range (the implicit backward reads the plan it returns)
_FLOAT32_PLAN_MIN_LOG = -35.0


def result_plan_dtype(log_a: Tensor, log_b: Tensor, compute: torch.dtype, result: torch.dtype) -> torch.dtype | None:
    r"""The dtype the final plan is written in: the results' where they are float32 and the solve
    float64 (the plan is rounded once, as the results' cast would round it, and never held in
    both dtypes), unless the smallest weights put the plan's entries near float32's subnormal
    range; None (the compute dtype) otherwise."""
    if result == torch.float32 and compute == torch.float64 and bool(
            (log_a.amin(-1) + log_b.amin(-1) > _FLOAT32_PLAN_MIN_LOG).all()):
        return torch.float32
    return None


def _lse_windows(x: Tensor, start: Tensor, width: int, theta: Tensor) -> Tensor:
    r""":math:`\log\sum_k \exp(x_{start_i + k} + \theta_{ik})` per row, in row blocks."""
    L, n = start.shape
    return blockwise(lambda sl: torch.logsumexp(window_gather(x, start[:, sl], width) + theta[:, sl], -1),
                     L, n, width, x.device)


def exp_windows(x: Tensor, y: Tensor, start: Tensor, width: int, theta: Tensor,
                out: Tensor | None = None, lo: Tensor | None = None, hi: Tensor | None = None) -> Tensor:
    r""":math:`\exp(x_i + y_{start_i + k} + \theta_{ik})`, in row blocks, into ``out`` if given.
    Entries outside the extent ``lo <= start_i + k <= hi``, when given, are 0."""
    if native.usable(x, y, theta):
        return native.exp_rows(x, y, start, width, theta, lo, hi, out)
    L, n = start.shape

    def block(sl: slice) -> Tensor:
        p = torch.exp(x[:, sl].unsqueeze(-1) + window_gather(y, start[:, sl], width) + theta[:, sl])
        if lo is None:
            return p
        return p.masked_fill(~window_inside(start[:, sl], width, lo[:, sl], hi[:, sl]), 0.0)

    return blockwise(block, L, n, width, x.device, out)


def row_update(st: SolverState, psi: Tensor, phi: Tensor | None = None) -> Tensor:
    r"""New row potentials; ``phi``, the current ones, is the guess the kernel shifts by."""
    b = st.band
    if st.native(psi):
        shift = None if phi is None else st.log_a - phi
        return st.log_a - native.lse_rows(psi, b.row_start, b.width, st.theta_row, b.row_lo, b.row_hi, shift)
    return st.log_a - _lse_windows(psi, b.row_start, b.width, st.theta_row)


def col_update(st: SolverState, phi: Tensor, psi: Tensor | None = None) -> Tensor:
    r"""New column potentials; ``psi``, the current ones, is the guess the kernel shifts by."""
    b = st.band
    if st.native(phi):
        shift = None if psi is None else st.log_b - psi
        return st.log_b - native.lse_cols(phi, b.row_start, b.width, st.theta_row, st.log_b.shape[1],
                                          b.row_lo, b.row_hi, shift)
    return st.log_b - _lse_windows(phi, b.col_start, b.col_width, st.theta_col)


def row_error(st: SolverState, phi: Tensor, phi_next: Tensor) -> Tensor:
    r"""L1 row-marginal error relative to the mass, :math:`\sum_i |a_i - r_i| / \sum_i a_i`."""
    a = st.log_a.exp()
    return (a * (-torch.expm1(phi - phi_next)).abs()).sum(-1) / a.sum(-1)


def plan_row(st: SolverState, out: Tensor | None = None, row_sum: Tensor | None = None) -> Tensor:
    r"""The plan on the row windows (into ``out`` if given): from the kept column exps where they
    are ``st.phi``'s, else one exp per entry. ``row_sum`` (L, n), when given, receives the plan's row
    sums where the plan comes from the kept exps (:meth:`SolverState.kept_for`; untouched otherwise)."""
    b = st.band
    c = st.kept_for(st.phi)
    if c is not None:
        out = _band_sized(b, c) if out is None else out
        # entries below the plan dtype's normal range are zeros (no subnormals in a float32 plan)
        tiny = max(math.exp(native.EXP_FLOOR[c.dtype]), torch.finfo(out.dtype).tiny)
        return native.kept_plan(c, b.row_start, b.width, b.row_lo, b.row_hi, *st.kept_buffer(st.phi.dtype),
                                torch.ones_like(c[:, 0]), out, tiny, row_sum=row_sum)
    return exp_windows(st.phi, st.psi, b.row_start, b.width, st.theta_row, out, b.row_lo, b.row_hi)


# log of the smallest ratio min(a) min(b) / max(a) for which a float32 Newton operator (plan
# scaled by 1 / max(a)) keeps entries down to 1e-22 of a_i b_j above float32's normal range
_FLOAT32_OPERATOR_MIN_LOG = -35.0


def newton_plan(st: SolverState) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor | None]:
    r"""The plan for Newton's operator, scaled by :math:`c = 1/\max_i a_i` per slice: the
    plan, its row and column sums (None: take the operator's), :math:`\log c` ``(L, 1)`` and
    the offsets of a compact plan (None: padded, ``(L, n, W)``).

    With the compiled kernels and float64 potentials the plan is compact (each row's
    extent only, about half the padded window) and stored in float32: each of the
    operator's products reads about a quarter of the padded float64 band. The row sums, which
    form the right-hand side, are summed in float64 before rounding. The operator is the
    exact Laplacian of the rounded weights, within a factor :math:`1 \pm 2^{-24}` of the
    true one, which slows Newton's convergence by that factor per step only; the scaling
    keeps the entries that matter in float32's normal range.
    """
    b = st.band
    log_c = -st.log_a.amax(-1, keepdim=True)
    narrow = st.native(st.phi) and st.phi.dtype == torch.float64 and bool(
        (st.log_a.amin(-1) + st.log_b.amin(-1) + log_c.squeeze(-1) > _FLOAT32_OPERATOR_MIN_LOG).all())
    if narrow:
        row_sum = torch.empty_like(st.phi)
        out, offsets = st.compact_buffer(torch.float32)
        tiny = torch.finfo(torch.float32).tiny
        c = st.kept_for(st.phi)
        if c is not None:
            col_sum = torch.empty_like(st.psi)
            p = native.kept_plan(c, b.row_start, b.width, b.row_lo, b.row_hi, *st.kept_buffer(st.phi.dtype),
                                 log_c.exp(), out, tiny, offsets, row_sum, col_sum)
            return p, row_sum, col_sum, log_c, offsets
        p = native.exp_rows(st.phi + log_c, st.psi, b.row_start, b.width, st.theta_row, b.row_lo, b.row_hi,
                            out, row_sum, offsets, floor=math.log(tiny))
        return p, row_sum, None, log_c, offsets
    p = exp_windows(st.phi + log_c, st.psi, b.row_start, b.width, st.theta_row,
                    st.buffer("row", st.theta_row), b.row_lo, b.row_hi)
    return p, None, None, log_c, None


def plan_col(st: SolverState, log_scale: Tensor | None = None, reuse: bool = False) -> Tensor:
    r"""The plan on the column windows (times ``exp(log_scale)`` (L, 1) when given)."""
    b = st.band
    out = st.buffer("col", st.theta_col) if reuse else None
    phi = st.phi if log_scale is None else st.phi + log_scale
    return exp_windows(st.psi, phi, b.col_start, b.col_width, st.theta_col, out)


def sweep(st: SolverState, phi: Tensor, psi: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""One sweep from ``phi``: the column update :math:`\psi(\phi)`, the next row potentials and the
    marginal error of ``phi`` ``(L,)``; ``psi``, a guess of :math:`\psi(\phi)`, shifts the exps.

    With the compiled kernels the column pass keeps its exps, and the row marginals of
    :math:`(\phi, \psi(\phi))` are their sums weighted by :math:`b_j / s_j` (``native._sweep``):
    one exp per band entry, not two. Where a sum leaves the exponent range (a far-off guess),
    the sweep is redone with exact log-sum-exps."""
    if psi is not None and st.native(phi, psi):
        b = st.band
        keep, offsets = st.kept_buffer(phi.dtype)
        st.keep(None)  # the buffer is rewritten now
        shift = native.sweep_shift(st.log_b, psi)
        logits = st.source if st.source is not None else st.theta_row
        s = native.col_sums_kept(phi, b.row_start, b.width, logits, st.log_b.shape[1], b.row_lo, b.row_hi, shift,
                                 keep, offsets)
        safe = native.SAFE_SUMS[phi.dtype]
        psi_new, c, ok = native.sweep_cols(s, shift, st.log_b, safe)
        if ok:
            r = native.row_dot(c, b.row_start, b.width, b.row_lo, b.row_hi, keep, offsets)
            phi_next, err, ok = native.sweep_rows(r, phi, st.log_a, safe)
            if ok:
                st.keep(phi, c)
                return psi_new, phi_next, err
    psi_new = col_update(st, phi, psi)
    phi_next = row_update(st, psi_new, phi)
    return psi_new, phi_next, row_error(st, phi, phi_next)



def first_sweep(st: SolverState, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r""":func:`sweep` from ``phi``, with the state's column potentials as the guess (what :func:`sweeps`
    takes as ``first``)."""
    return sweep(st, phi, st.psi)


def sweeps(st: SolverState, max_iter: int, tol: float, check_every: int,
           first: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[int, Tensor]:
    r"""Plain Sinkhorn sweeps from ``st.phi`` (updates ``st`` in place); ``first``, when given, is
    :func:`first_sweep` of ``st.phi``, already computed.

    Returns the number of sweeps and the final marginal error per slice. The
    error is read on the host every ``check_every`` sweeps only.
    """
    phi = st.phi
    psi, phi_next, err = first_sweep(st, phi) if first is None else first
    it = 0
    while not (it >= max_iter or (it % check_every == 0 and bool((err <= tol).all()))):
        phi = phi_next
        psi, phi_next, err = sweep(st, phi, psi)
        it += 1
    st.phi, st.psi = phi, psi
    return it, err


#: a Newton step's CG stops at the relative residual that leaves this share of ``tol`` (see newton)
CG_FINAL_SHARE = 0.25


def newton(st: SolverState, stair: Staircase, max_steps: int, tol: float, err: Tensor,
           cg_max_iter: int) -> tuple[int, int, Tensor]:
    r"""Damped Newton steps on the semi-dual :math:`\phi \mapsto \langle a,\phi\rangle + \langle b,\psi(\phi)\rangle`.

    Each step solves :math:`\mathcal{L}(\delta\phi, -\delta\psi) = (a - r, 0)` by
    preconditioned CG to a relative residual of ``min(0.1, max(err, tol / (4 err)))``
    (inexact Newton, quadratic in the limit), then backtracks until the marginal error
    decreases. Slices that are converged take no step.
    Returns (steps, cg iterations, error).
    """
    steps = cg_total = 0
    a = st.log_a.exp()
    limit = max(1e3, tol / (16 * torch.finfo(st.phi.dtype).eps))
    # the preconditioner trusts no coupling below cut_floor (band_operator; the path's cuts carry
    # rounding of order eps * max(cut)): a floor of 1e-9 holds in float64; in float32 it let
    # rounding through (CG diverged wherever the plan's couplings underflow), so the floor stays
    # 1e3 eps above it
    cut_floor = max(1e-9, 1e3 * torch.finfo(st.phi.dtype).eps)
    prefer_path = False
    for _ in range(max_steps):
        todo = err > tol
        if not bool(todo.any()):
            break
        p_row, row_sum, col_sum, log_scale, offsets = newton_plan(st)
        operator = partial(band_operator, st.band, stair, p_row, lambda: plan_col(st, log_scale, reuse=True),
                           cut_floor=cut_floor, in_place=True, dtype=st.phi.dtype, offsets=offsets,
                           workspace=st.workspace, sums=None if col_sum is None else (row_sum, col_sum))
        op = operator(path=prefer_path)
        row_sum = op.row_sum if row_sum is None else row_sum
        # the operator is the scaled Laplacian: scale the right-hand side alike
        rhs_r = torch.where(todo.unsqueeze(-1), log_scale.exp() * a - row_sum, torch.zeros_like(a))
        rhs_c = torch.zeros_like(st.psi)
        # inexact Newton: CG to min(0.1, err), never below what the dtype resolves; a step that
        # ends within tol needs no more: a residual of tol / (4 err) leaves tol / 4
        rtol = torch.clamp(torch.maximum(err, CG_FINAL_SHARE * tol / err),
                           min=100 * torch.finfo(err.dtype).eps, max=0.1)
        d_phi, _, info = solve_newton_system(op, partial(operator, path=True), rhs_r, rhs_c, rtol, cg_max_iter)
        prefer_path |= info.slow  # the staircase factor proved slow on this plan: the path from now on
        del op, p_row, operator  # the next step rewrites the workspace
        cg_total += info.iterations
        best = [st.phi, st.psi, err]

        def trial(alpha: float, allowed: Tensor) -> Tensor:
            phi = st.phi + alpha * d_phi
            psi, _, e = sweep(st, phi, st.psi)
            # the error is read from phi - phi_next, exact only while |phi| * eps stays below tol: a
            # step to huge potentials (rows of tiny weight, near-singular operator) reads as converged
            sane = phi.abs().amax(-1) < limit
            better = allowed & sane & torch.isfinite(e) & (e < best[2])
            if bool(better.all()):  # the trial itself (its column exps stay usable: kept_for)
                best[0], best[1], best[2] = phi, psi, e
            else:
                best[0] = torch.where(better.unsqueeze(-1), phi, best[0])
                best[1] = torch.where(better.unsqueeze(-1), psi, best[1])
                best[2] = torch.where(better, e, best[2])
            return better

        # Full step, then longer ones while they help: on nearly decoupled
        # parts of the band the dual is exponential and a Newton step from the
        # convex side undershoots (it gains only a factor e per step). A full
        # step that gains more than a factor 4 is in the quadratic regime.
        improved = torch.zeros_like(todo)
        before = err
        for alpha in (1.0, 2.0, 4.0, 8.0, 16.0):
            better = trial(alpha, todo)
            improved |= better
            longer = better & (best[2] > 0.25 * before)
            if not bool(longer.any()):
                break
        for alpha in (0.5, 0.25, 0.125, 0.0625):  # backtracking where nothing helped
            if bool((improved | ~todo).all()):
                break
            improved |= trial(alpha, todo & ~improved)
        steps += 1
        st.phi, st.psi, err = best
        if not bool((improved | ~todo).all()):
            break  # Newton stalls (only when the band or precision limits it)
    return steps, cg_total, err
