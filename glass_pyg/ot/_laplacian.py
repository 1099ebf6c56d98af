r"""Linear algebra of a banded plan: the Hessian of the entropic dual.

For a plan :math:`P` with row sums :math:`r` and column sums :math:`c` the
Hessian of the dual (in units of :math:`1/\gamma`) is, up to the sign of the
column block, the weighted Laplacian of the bipartite graph with edge
weights :math:`P_{ij}`:

.. math::
    \mathcal{L} = \begin{pmatrix} \mathrm{diag}(r) & -P \\ -P^\top &
    \mathrm{diag}(c) \end{pmatrix}.

Newton steps of the solver and the implicit backward both solve
:math:`\mathcal{L} x = y` (with :math:`\mathbf{1}^\top y = 0`) by
preconditioned conjugate gradients. Sorted 1-D plans make that graph a
thickened path through the ``n + m`` nodes in staircase order, whose
couplings fall off fast with the distance along the path. The compiled
kernels precondition with the Laplacian of the couplings between nodes at
most :data:`~glass_pyg.ot.native.STAIRCASE_WIDTH` apart, eliminated exactly
in staircase order (a banded factor, O(n) to form and to apply); it leaves
out only far couplings (it lies below the Laplacian, and the preconditioned
spectrum grows from 1 with their share), and where they hold little mass CG
needs a handful of iterations where the path preconditioner below needs
forty. Wide bands (most of the mass farther apart than the bandwidth:
absolute temperatures, large rank ones) and the torch route (accelerators)
take the Laplacian of the path itself, each cut weighted by the plan mass
that crosses it times its span (solved exactly by two cumulative sums),
plus the inverse diagonal, which carries wide, well-mixed bands.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from . import native
from ._band import Band, Staircase
from ._row_blocks import blockwise, row_blocks, window_gather

#: the staircase factor preconditions where pairs farther apart than its bandwidth hold at most
#: this share of a slice's mass; wider bands (absolute temperatures, large rank ones) take the path
STAIRCASE_FAR_SHARE = 0.05


@dataclass(frozen=True)
class BandOperator:
    r"""Bipartite Laplacian of a banded plan, ready for matrix-vector products."""

    band: Band
    p_row: Tensor  # (L, n, W)
    p_col: Tensor | None  # (L, m, Wc), zero on padding; None where the compiled kernels take p_row
    row_sum: Tensor  # (L, n)
    col_sum: Tensor  # (L, m)
    row_pos: Tensor  # (L, n) node order along the staircase
    col_pos: Tensor  # (L, m)
    cut: Tensor | None  # (L, n + m - 1) path preconditioner weights (torch route)
    inv_row_sum: Tensor  # (L, n) diagonal preconditioner, 0 on empty rows
    inv_col_sum: Tensor  # (L, m)
    inv_cut: Tensor | None  # (L, n + m - 1), 0 where a cut is rigid (below the floor)
    offsets: Tensor | None = None  # p_row is compact (extents only, see native.compact_offsets)
    tiny: float = 0.0  # entries of p_row below it are read as zeros (compiled kernels)
    #: staircase factor of the compiled kernels: ratios (L, N, K); first ratios and inverse pivots (L, N), the
    #: inverse pivot 0 at grounded nodes and the last
    factor: tuple[Tensor, Tensor, Tensor] | None = None
    #: buffers of the compiled kernels' results in matvec_dot and precondition (overwritten by the next call)
    scratch: dict = field(default_factory=dict, compare=False, repr=False)

    def matvec(self, xr: Tensor, xc: Tensor) -> tuple[Tensor, Tensor]:
        """The operator applied to a row and a column vector (fresh tensors)."""
        b = self.band
        if self.p_col is None:
            qr, qc, _ = native.band_laplacian(self.p_row, b.row_start, b.width, xr, xc, b.row_lo, b.row_hi,
                                              self.offsets, self.tiny)
            return qr, qc
        pxc = window_dot(self.p_row, xc, b.row_start, b.width)
        ptxr = window_dot(self.p_col, xr, b.col_start, b.col_width)
        # in place on the fresh products: no band-length temporaries
        return pxc.neg_().addcmul_(self.row_sum, xr), ptxr.neg_().addcmul_(self.col_sum, xc)

    def matvec_dot(self, xr: Tensor, xc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""The operator applied to ``x`` and the quadratic form :math:`\langle x, \mathcal{L}x\rangle`
        per slice. The compiled kernels take the difference form
        :math:`\sum_j P_{ij}(x_i - x_j)` and the form as a sum of squares, in one pass, into buffers
        that the next call overwrites: ``diag(r) x - P x`` cancels when ``x`` is smooth along the
        staircase, and at ``n = 2^18`` its rounding stalled the adjoint's CG short of the accuracy
        its gradient needs."""
        if self.p_col is None:
            b = self.band
            return native.band_laplacian(self.p_row, b.row_start, b.width, xr, xc, b.row_lo, b.row_hi,
                                         self.offsets, self.tiny, self.scratch)
        qr, qc = self.matvec(xr, xc)
        return qr, qc, _dot(xr, xc, qr, qc)

    def precondition(self, yr: Tensor, yc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``x = M^{-1} y`` and :math:`\langle y, x\rangle` per slice.

        The staircase factor's solve (see the module), plus the inverse diagonal at the nodes
        it grounds; otherwise (torch, wide bands) the path Laplacian's inverse plus the
        diagonal's. The path captures the long-range, low-frequency coupling of a narrow band
        (where a diagonal alone stalls); the diagonal captures the well-mixed coupling of a
        wide band (where the path's cut weights are dominated by long edges and its inverse
        alone needs hundreds of CG iterations). Both are symmetric positive definite on the
        range. With the compiled kernels ``x`` lies in buffers that the next call overwrites.
        """
        if self.factor is not None:
            return native.staircase_precondition(*self.factor, self.row_pos, self.col_pos, yr, yc,
                                                 self.inv_row_sum, self.inv_col_sum, self.scratch)
        if self.p_col is None:
            return native.path_precondition(self.row_pos, self.col_pos, yr, yc, self.inv_cut,
                                            self.inv_row_sum, self.inv_col_sum, self.scratch)
        L, n = yr.shape
        z = yr.new_zeros(L, n + yc.shape[1])
        z.scatter_(1, self.row_pos, yr)
        z.scatter_(1, self.col_pos, yc)
        flux = torch.cumsum(z, -1)[:, :-1]
        steps = -flux * self.inv_cut
        x = torch.cat([z.new_zeros(L, 1), torch.cumsum(steps, -1)], -1)
        x = x - x.mean(-1, keepdim=True)
        xr = torch.gather(x, 1, self.row_pos) + yr * self.inv_row_sum
        xc = torch.gather(x, 1, self.col_pos) + yc * self.inv_col_sum
        return xr, xc, _dot(yr, yc, xr, xc)


def _safe_inverse(x: Tensor) -> Tensor:
    return torch.where(x > 0, 1.0 / torch.where(x > 0, x, torch.ones_like(x)), torch.zeros_like(x))


def window_dot(p: Tensor, x: Tensor, start: Tensor, width: int) -> Tensor:
    r""":math:`\sum_k p_{ik}\, x_{start_i + k}` per row, in row blocks."""
    L, n = start.shape
    return blockwise(lambda sl: (p[:, sl] * window_gather(x, start[:, sl], width)).sum(-1),
                     L, n, width, x.device)


def _drop_subnormal_range(p: Tensor, in_place: bool) -> Tensor:
    # entries below sqrt(tiny) cannot matter at the dtype's precision, and
    # products with them go subnormal, which is many times slower on CPUs
    tiny = torch.finfo(p.dtype).tiny ** 0.5
    if not in_place:
        p = p.clone()
    for sl in row_blocks(p.shape[0], p.shape[1], p.shape[2], p.device):
        p[:, sl].masked_fill_(p[:, sl] < tiny, 0.0)
    return p


def band_operator(band: Band, stair: Staircase, p_row: Tensor, p_col: Tensor | Callable[[], Tensor],
                  cut_floor: float = 1e-12, in_place: bool = False,
                  dtype: torch.dtype | None = None, offsets: Tensor | None = None,
                  workspace: dict | None = None, sums: tuple[Tensor, Tensor] | None = None,
                  path: bool = False) -> BandOperator:
    r"""The Laplacian of the banded plan ``p_row`` (row layout) / ``p_col`` (column layout,
    or a function that builds it: the compiled kernels work from the row layout alone).
    Its vectors have ``dtype`` (default ``p_row``'s); the compiled kernels also take a
    float32 ``p_row`` with float64 vectors, the Laplacian of the rounded weights, with
    products and sums in float64, and a compact ``p_row`` (the extents only, at
    ``offsets``), which must hold no entries below its dtype's normal range
    (:func:`~glass_pyg.ot.native.exp_rows` with a ``floor`` makes it so).

    ``cut_floor`` is where the preconditioner stops trusting a coupling: the staircase
    factor ties a node whose pivot is below it (relative to the largest row or column sum)
    rigidly to the next, and the path takes a cut below it (relative to the largest cut
    weight) as rigid. For the path: the running sum that forms the cuts carries rounding of order
    ``eps * max(cut)``, so a cut near that level (decoupled stretches of the path:
    distribution tails at rank temperature) is rounding, and dividing the flux across it
    (itself rounding) by it put arbitrary jumps into the preconditioned residual. The
    flux across the Laplacian's near-null block shifts is then never resolved and CG
    stalls with an error in every mode: the implicit gradient of ``transport_cost()`` at
    ``n = 2^18`` came out 1000x off. Cuts below the floor are taken as rigid instead
    (no jump across them; the preconditioner stays symmetric positive definite with its
    diagonal part), which leaves the weak couplings to CG. The backward keeps ``1e-12``;
    Newton takes ``1e-9`` (``1e3`` eps of the dtype in float32).
    Entries in the subnormal range of products are dropped: the compiled kernels read them
    as zeros (the plan is neither copied nor changed); torch zeroes them in a copy, or, with
    ``in_place``, in ``p_row`` and ``p_col`` themselves. With ``workspace`` the compiled
    staircase factor lies in its buffer, which the next operator built with it overwrites.
    ``sums``, the plan's row and column sums where its maker formed them (``native.kept_plan``: before
    rounding to float32), spare the compiled kernels their pass; they scale and ground the
    preconditioner only (the products take the difference form). ``path`` takes the path
    preconditioner without trying the staircase factor.
    """
    n, m = band.row_start.shape[1], band.col_start.shape[1]
    dtype = p_row.dtype if dtype is None else dtype
    if native.usable(p_row):
        # products in p_row's dtype go subnormal below sqrt(tiny); a narrower plan is
        # multiplied in the vectors' dtype and only needs its entries normal
        tiny = 0.0 if offsets is not None else torch.finfo(p_row.dtype).tiny ** (
            0.5 if dtype == p_row.dtype else 1.0)
        row_sum, col_sum = sums if sums is not None else native.band_matvec(
            p_row, band.row_start, band.width, torch.ones_like(stair.a_start, dtype=dtype),
            torch.ones_like(stair.b_start, dtype=dtype), band.row_lo, band.row_hi, offsets, tiny)
        scale = torch.maximum(row_sum.amax(-1), col_sum.amax(-1)).clamp_min(torch.finfo(dtype).tiny)
        if not path:
            w, far = native.staircase_weights(p_row, band.row_start, band.width, stair.row_pos, stair.col_pos,
                                              scale, band.row_lo, band.row_hi, dtype, offsets, tiny, workspace)
            if bool((far <= STAIRCASE_FAR_SHARE).all()):
                first, inv_pivot = native.staircase_factor(w, torch.full_like(scale, cut_floor), scale, dtype)
                return BandOperator(band, p_row, None, row_sum, col_sum, stair.row_pos, stair.col_pos, None,
                                    _safe_inverse(row_sum), _safe_inverse(col_sum), None, offsets, tiny,
                                    factor=(w, first, inv_pivot))
            del w
        diff = native.band_cut_diff(p_row, band.row_start, band.width, stair.row_pos, stair.col_pos,
                                    band.row_lo, band.row_hi, dtype, offsets, tiny)
        return _path_operator(band, stair, p_row, None, row_sum, col_sum, diff, cut_floor, offsets, tiny)
    if dtype != p_row.dtype or offsets is not None:
        raise ValueError(f"a {'compact ' if offsets is not None else ''}{p_row.dtype} plan with {dtype} "
                         "vectors needs the compiled kernels")
    if callable(p_col):
        p_col = p_col()
    p_row, p_col = _drop_subnormal_range(p_row, in_place), _drop_subnormal_range(p_col, in_place)
    L = p_row.shape[0]
    diff = p_row.new_zeros(L, n + m)
    for sl in row_blocks(L, n, band.width, p_row.device):
        # each plan entry crosses the path cuts between its row's and its column's positions
        pos_c = window_gather(stair.col_pos, band.row_start[:, sl], band.width)
        pos_r = stair.row_pos[:, sl].unsqueeze(-1).expand_as(pos_c)
        lo = torch.minimum(pos_r, pos_c)
        hi = torch.maximum(pos_r, pos_c)
        w = p_row[:, sl] * (hi - lo).to(p_row.dtype)
        diff.scatter_add_(1, lo.reshape(L, -1), w.reshape(L, -1))
        diff.scatter_add_(1, hi.reshape(L, -1), -w.reshape(L, -1))
    return _path_operator(band, stair, p_row, p_col, p_row.sum(-1), p_col.sum(-1), diff, cut_floor)


def _path_operator(band: Band, stair: Staircase, p_row: Tensor, p_col: Tensor | None, row_sum: Tensor,
                   col_sum: Tensor, diff: Tensor, cut_floor: float, offsets: Tensor | None = None,
                   tiny: float = 0.0) -> BandOperator:
    cut = torch.cumsum(diff, -1)[:, :-1]
    floor = cut.amax(-1, keepdim=True).clamp_min(torch.finfo(cut.dtype).tiny) * cut_floor
    # a cut below the floor is rounding: rigid (no jump across it) rather than divided by
    inv_cut = _safe_inverse(torch.where(cut > floor, cut, torch.zeros_like(cut)))
    return BandOperator(band, p_row, p_col, row_sum, col_sum, stair.row_pos, stair.col_pos, cut,
                        _safe_inverse(row_sum), _safe_inverse(col_sum), inv_cut, offsets, tiny)


@dataclass(frozen=True)
class CGInfo:
    """Diagnostics of a conjugate-gradient solve: iterations, the final residual per slice, and whether
    it gave up as slow (``solve_laplacian``'s ``slow``)."""
    iterations: int
    residual: Tensor  # (L,) relative residual
    slow: bool = False


def _dot(ar: Tensor, ac: Tensor, br: Tensor, bc: Tensor) -> Tensor:
    return torch.linalg.vecdot(ar, br) + torch.linalg.vecdot(ac, bc)


#: below this relative residual CG gains until rounding stops it: there a slice keeps its best iterate,
#: and stops once :data:`FLOOR_WINDOW` iterations bring no residual below :data:`FLOOR_GAIN` of the best
#: (see solve_laplacian)
ROUNDING_ZONE = 1e-9
FLOOR_GAIN = 0.9
FLOOR_WINDOW = 5


def solve_laplacian(op: BandOperator, yr: Tensor, yc: Tensor, rtol: float | Tensor,
                    max_iter: int, check_every: int = 5,
                    slow: tuple[int, float] | None = None) -> tuple[Tensor, Tensor, CGInfo]:
    r"""Preconditioned conjugate gradient for :math:`\mathcal{L} x = y`, batched over slices.

    ``y`` must sum to zero per slice (it lies in the range of the Laplacian);
    the returned ``x`` has zero mean. On accelerators convergence is read every
    ``check_every`` iterations (one host synchronisation each); on CPU, where
    reading it is free, after every iteration. Stagnation is judged over
    windows of ``check_every`` iterations.

    Near the rounding floor (relative residual below :data:`ROUNDING_ZONE`) a slice keeps its best
    iterate and stops once :data:`FLOOR_WINDOW` iterations in a row fail to bring the residual
    below :data:`FLOOR_GAIN` of the best; the best iterate is returned. From ``n = 2^18`` the floor
    lies between ``1e-15`` and ``1e-11`` depending on the draw (the tails decouple the plan into
    thousands of blocks, and their weak pivots put values of order ``1e19`` into the preconditioned
    vectors, which costs the substitutions their digits); the Laplacian's smooth modes have eigenvalues of
    order ``1/n^2``, so iterations past the floor move the solution along them (the implicit
    gradient at ``2^18`` went from 0.4% to 0.9% off a direct solve in five such iterations):
    the best iterate is the one before them. Slow progress is not the floor: on skewed scores
    (targets that are the cube of a uniform) CG gains 0.6-0.99 per iteration from ``1e-10`` down
    to a floor near ``1e-13``, and the weakly coupled tails make the gradient depend on that
    stretch (stopped near ``1e-9``, it was 5% to 700% off central differences, or of the wrong
    sign). The stagnation window applies above the zone only.

    ``slow = (k, share)``: a solve still above ``share`` of its starting residual (and above ``rtol``)
    after ``k`` iterations gives up (``info.slow``): the caller may restart it on another
    preconditioner (:func:`solve_newton_system`).
    """
    shift = (yr.sum(-1) + yc.sum(-1)) / (yr.shape[-1] + yc.shape[-1])
    yr = yr - shift.unsqueeze(-1)
    yc = yc - shift.unsqueeze(-1)
    norm_y = torch.sqrt(_dot(yr, yc, yr, yc)).clamp_min(torch.finfo(yr.dtype).tiny)
    rtol = torch.as_tensor(rtol, dtype=yr.dtype, device=yr.device)
    xr, xc = torch.zeros_like(yr), torch.zeros_like(yc)
    rr, rc = yr.clone(), yc.clone()
    zr, zc, rz = op.precondition(rr, rc)
    pr, pc = zr.clone(), zc.clone()
    active = torch.ones_like(norm_y, dtype=torch.bool)
    on_host = yr.device.type == "cpu"
    fused = op.p_col is None  # the compiled kernels: each vector update one pass
    it = 0
    gave_up = False
    res = torch.ones_like(norm_y)
    last_res = torch.full_like(norm_y, float("inf"))
    best = torch.full_like(norm_y, float("inf"))  # the best residual below the zone, and its iterate
    best_r = best_c = None
    since = torch.zeros_like(norm_y, dtype=torch.int64)  # iterations in the zone since the best

    def step(alpha: Tensor) -> Tensor:
        # x += alpha p, r -= alpha q (per slice), in place; returns <r, r>
        if fused:
            return native.cg_step(alpha, xr, xc, rr, rc, pr, pc, qr, qc)
        a = alpha.unsqueeze(-1)  # each update a single pass, no temporaries
        xr.addcmul_(a, pr)
        xc.addcmul_(a, pc)
        rr.addcmul_(a, qr, value=-1.0)
        rc.addcmul_(a, qc, value=-1.0)
        return _dot(rr, rc, rr, rc)

    for it in range(1, max_iter + 1):
        qr, qc, pq = op.matvec_dot(pr, pc)
        usable = active & (pq > 0) & torch.isfinite(pq) & torch.isfinite(rz)
        alpha = torch.where(usable, rz / pq.clamp_min(torch.finfo(pq.dtype).tiny), torch.zeros_like(pq))
        res = torch.sqrt(step(alpha)) / norm_y
        zone = usable & (res < ROUNDING_ZONE)
        better = zone & (res < FLOOR_GAIN * best)
        # the best iterate kept (on accelerators always, masked: no host read)
        if not on_host or bool(better.any()):
            keep = better.unsqueeze(-1)
            best_r = xr.clone() if best_r is None else torch.where(keep, xr, best_r)
            best_c = xc.clone() if best_c is None else torch.where(keep, xc, best_c)
            best = torch.where(better, res, best)
        since = torch.where(better, torch.zeros_like(since), since + zone.long())
        active = usable & (res > rtol) & (since < FLOOR_WINDOW)
        if it % check_every == 0:  # stagnation above the zone: no progress over the last window
            active = active & ((res < 0.99 * last_res) | zone)
            last_res = res
        if (on_host or it % check_every == 0) and not bool(active.any()):
            break
        if slow is not None and it == slow[0] and bool((active & (res > slow[1])).any()):
            gave_up = True
            break
        zr, zc, rz_new = op.precondition(rr, rc)
        beta = torch.where(active, rz_new / rz.clamp_min(torch.finfo(rz.dtype).tiny), torch.zeros_like(rz))
        rz = rz_new
        if fused:
            native.cg_direction(beta, pr, pc, zr, zc)
        else:
            b = beta.unsqueeze(-1)
            pr.mul_(b).add_(zr)
            pc.mul_(b).add_(zc)
    if best_r is not None:  # where the solve ended above its best (past the floor): the best iterate
        back = best < res
        xr, xc = torch.where(back.unsqueeze(-1), best_r, xr), torch.where(back.unsqueeze(-1), best_c, xc)
        res = torch.minimum(res, best)
    mean = (xr.sum(-1) + xc.sum(-1)) / (xr.shape[-1] + xc.shape[-1])
    return xr - mean.unsqueeze(-1), xc - mean.unsqueeze(-1), CGInfo(it, res, gave_up)


#: a staircase-preconditioned Newton solve still above this share of its starting residual after
#: STAIRCASE_TRIAL iterations restarts on the path preconditioner (see solve_newton_system)
STAIRCASE_TRIAL = 5
STAIRCASE_SLOW = 0.1


def solve_newton_system(op: BandOperator, path: Callable[[], BandOperator], yr: Tensor, yc: Tensor,
                        rtol: Tensor, max_iter: int) -> tuple[Tensor, Tensor, CGInfo]:
    r""":func:`solve_laplacian` on ``op``, restarted on ``path()`` (the same Laplacian with the path
    preconditioner) from where it stands when the staircase factor proves slow.

    The staircase factor wins where the couplings it leaves out are weak (2 + 4 iterations against
    7 + 12 for a Newton solve at rank temperature, normal scores, 65536); on some skewed score
    distributions it does far worse than the path (the cube of a uniform: 31 + 44 against 7 + 12),
    although the couplings it leaves out hold under 5% of the mass. A staircase solve that has not
    gained a factor :data:`STAIRCASE_SLOW` in :data:`STAIRCASE_TRIAL` iterations (it gains about 0.2
    per iteration where it works) is continued on the path:
    :math:`x = x_1 + \mathcal{L}^{+}(y - \mathcal{L}x_1)`. ``info.slow`` says the path took over
    (the caller keeps it for later steps)."""
    if op.factor is None:
        return solve_laplacian(op, yr, yc, rtol, max_iter)
    xr, xc, info = solve_laplacian(op, yr, yc, rtol, max_iter, slow=(STAIRCASE_TRIAL, STAIRCASE_SLOW))
    if not info.slow:
        return xr, xc, info
    qr, qc = op.matvec(xr, xc)
    rr, rc = yr - qr, yc - qc
    scale = torch.sqrt(_dot(yr, yc, yr, yc) / _dot(rr, rc, rr, rc).clamp_min(torch.finfo(yr.dtype).tiny))
    dr, dc, more = solve_laplacian(path(), rr, rc, rtol * scale, max_iter - info.iterations)
    return xr + dr, xc + dc, CGInfo(info.iterations + more.iterations, more.residual / scale, True)
