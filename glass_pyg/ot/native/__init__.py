r"""Compiled CPU kernels for the band passes of the banded solver and the work around it.

Each reduction over the band (the row and column ``logsumexp`` of a sweep, the
plan's ``exp``, the Laplacian's products, its preconditioner, the conjugate
gradient's vector updates, the implicit gradient's two passes) is one pass in C
instead of gathers, band-sized temporaries and reductions in torch. So are the
costs of the shipped losses on the band's windows and their gradients
(:class:`~glass_pyg.ot._expectation.WindowExpectation`), the sphere
projection's chart scores with their analytic gradient, and the graph
refinement's neighbourhood votes. The band kernels visit
only each row's extent in the band (about half the padded window) and need no
column layout: column reductions scatter from the row layout. The source
ships with the package and is compiled on first use with the system C compiler
into ``$GLASS_PYG_CACHE`` (default ``~/.cache/glass_pyg``), keyed by the
source, the flags and the machine. Without a compiler, with
``GLASS_PYG_NATIVE=0``, on accelerators, or when autograd must see the
operation, the solver runs its torch implementation; :func:`status` says which
and why. Both give the same numbers to rounding (the logits bitwise).

Rows are split between ``torch.get_num_threads()`` threads (the calls release
the interpreter lock); kernels that accumulate into columns get one
accumulator per thread.
"""
from __future__ import annotations

import ctypes
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from .build import _library, _state, disabled, status, usable, usable_plan

__all__ = ["status", "disabled", "usable", "usable_plan", "lse_rows", "lse_cols", "exp_rows", "band_logits",
           "col_sums_kept", "LogitReference", "row_dot", "kept_plan", "compact_rows", "sweep_shift",
           "sweep_cols", "sweep_rows",
           "band_matvec", "band_laplacian", "band_cut_diff", "row_cost", "row_cost_grad",
           "path_precondition", "cg_step",
           "product_sums", "implicit_grad",
           "chart_scores", "chart_scores_backward", "window_costs",
           "window_costs_grad",
           "cg_direction", "sorted_search", "band_extent", "link_relaxation", "certify_band",
           "compact_offsets", "votes_topk", "sort_rows", "STAIRCASE_WIDTH", "staircase_weights", "staircase_factor",
           "staircase_precondition"]

_PARALLEL_MIN_ENTRIES = 1 << 16
#: the range of shifted exp sums the kernels trust (SAFE_LO, SAFE_HI in the C source), and the
#: exponent below which their terms are exact zeros (LO), per dtype
SAFE_SUMS = {torch.float64: (1e-250, 1e250), torch.float32: (1e-20, 1e20)}
EXP_FLOOR = {torch.float64: -700.0, torch.float32: -87.0}


def _threads(L: int, n: int, width: int) -> int:
    threads = max(1, torch.get_num_threads())
    return 1 if L * n * width < _PARALLEL_MIN_ENTRIES or n < 2 * threads else threads


def _ranges(total: int, parts: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of ``parts`` near-equal consecutive shares of ``range(total)``."""
    bounds = [total * k // parts for k in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _parallel(calls: list[tuple]) -> None:
    if len(calls) == 1:
        calls[0][0](*calls[0][1:])
        return
    if _state["pool"] is None or _state["pool_size"] != len(calls) - 1:
        _state["pool"] = ThreadPoolExecutor(max_workers=len(calls) - 1, thread_name_prefix="glass_pyg")
        _state["pool_size"] = len(calls) - 1
    # the calling thread takes the first share: it releases the interpreter lock inside the
    # kernel, which lets the workers start at once
    futures = [_state["pool"].submit(*c) for c in calls[1:]]
    calls[0][0](*calls[0][1:])
    for f in futures:
        f.result()


def _rows(name: str, dtype: torch.dtype | str, L: int, n: int, m: int, W: int, *args,
          accumulators: list[Tensor] | None = None) -> None:
    r"""Run kernel ``name`` for ``dtype`` (or a suffix) over the rows, split between threads;
    the thread ``k`` gets ``accumulators[k]`` as its last argument when given."""
    fn = getattr(_library(), f"{name}_{dtype if isinstance(dtype, str) else _suffix(dtype)}")
    threads = len(accumulators) if accumulators is not None else _threads(L, n, W)
    calls = []
    for k, (lo, hi) in enumerate(_ranges(n, threads)):
        extra = (_ptr(accumulators[k]),) if accumulators is not None else ()
        calls.append((fn, L, n, m, W, lo, hi, *args, *extra))
    _parallel(calls)


def _windows(start: Tensor, width: int, m: int) -> Tensor:
    # the kernels read x[start + k] unchecked: a window past the end is an error, not a read. A
    # solve passes the same starts to every kernel: the check is remembered on the tensor, with
    # its version (an in-place change is checked again; inference tensors have no version)
    start = start.to(torch.int64).contiguous()
    checked = None if start.is_inference() else (start._version, width, m)
    if checked is not None and getattr(start, "_glass_pyg_windows", None) == checked:
        return start
    if start.numel() and (int(start.min()) < 0 or int(start.max()) > m - width):
        raise ValueError(f"band windows of width {width} leave the vector of length {m}")
    if checked is not None:
        start._glass_pyg_windows = checked
    return start


def _ptr(x: Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if x is None else x.data_ptr())


def _suffix(dtype: torch.dtype) -> str:
    return "f64" if dtype == torch.float64 else "f32"


def _plan_suffix(vectors: torch.dtype, plan: torch.dtype) -> str:
    if vectors == plan:
        return _suffix(plan)
    if vectors == torch.float64 and plan == torch.float32:
        return "f64p32"
    raise ValueError(f"a {plan} plan cannot be used with {vectors} vectors")


def _extents(lo: Tensor | None, hi: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    if lo is None:
        return None, None
    return lo.to(torch.int64).contiguous(), hi.to(torch.int64).contiguous()


def lse_rows(x: Tensor, start: Tensor, width: int, theta: Tensor, lo: Tensor | None = None,
             hi: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    r""":math:`\log\sum_j \exp(x_{lj} + \theta_{l,i,j-start_{li}})` over row ``i``'s extent
    ``lo <= j <= hi`` (its whole window when ``lo`` is None): ``x`` (L, m), ``start``,
    ``lo``, ``hi`` (L, n) int64, ``theta`` (L, n, W) -> (L, n). ``shift`` (L, n), a guess of
    the result, saves the pass for the maximum where it is within the exponent range."""
    L, m = x.shape
    n = start.shape[1]
    x, start, theta = x.contiguous(), _windows(start, width, m), theta.contiguous()
    lo, hi = _extents(lo, hi)
    if shift is not None:
        shift = shift.to(x.dtype).contiguous()
        if shift.shape != (L, n):
            raise ValueError(f"shift must have shape {(L, n)}, got {tuple(shift.shape)}")
    out = x.new_empty(L, n)
    _rows("lse_rows", x.dtype, L, n, m, width, _ptr(x), _ptr(start), _ptr(lo), _ptr(hi), _ptr(theta),
          _ptr(shift), _ptr(out))
    return out


def lse_cols(x: Tensor, start: Tensor, width: int, theta: Tensor, m: int, lo: Tensor | None = None,
             hi: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
    r"""Column log-sum-exp from the row layout: :math:`\log\sum_i \exp(x_{li} + \theta_{l,i,j-start_{li}})`
    over the rows whose extent holds ``j``: ``x`` (L, n) -> (L, m). With a ``shift`` (L, m)
    it takes one pass (two where a column's shifted sum leaves the exponent range)."""
    L, n = x.shape
    x, start, theta = x.contiguous(), _windows(start, width, m), theta.contiguous()
    lo, hi = _extents(lo, hi)
    threads = _threads(L, n, width)
    args = (_ptr(x), _ptr(start), _ptr(lo), _ptr(hi), _ptr(theta))
    finite = torch.finfo(x.dtype)

    def sums(sh: Tensor) -> Tensor:
        acc = x.new_zeros(threads, L, m)
        _rows("col_sums", x.dtype, L, n, m, width, *args, _ptr(sh), _ptr(None), _ptr(None),
              accumulators=list(acc))
        return acc.sum(0) if threads > 1 else acc[0]

    if shift is not None:
        shift = shift.to(x.dtype).contiguous()
        if shift.shape != (L, m):
            raise ValueError(f"shift must have shape {(L, m)}, got {tuple(shift.shape)}")
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        s = sums(shift)
        safe_lo, safe_hi = SAFE_SUMS[x.dtype]
        ok = (s >= safe_lo) & (s <= safe_hi)
        if bool(ok.all()):
            return shift + s.log()
    acc = x.new_full((threads, L, m), -float("inf"))
    _rows("col_max", x.dtype, L, n, m, width, *args, accumulators=list(acc))
    mx = acc.amax(0)
    exact = mx + sums(torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))).log()
    exact = torch.where(mx > -finite.max, exact, mx)  # columns without a finite entry
    return exact if shift is None else torch.where(ok, shift + s.log(), exact)


def compact_offsets(lo: Tensor, hi: Tensor) -> Tensor:
    r"""Offsets of a compact plan, which stores only each row's extent ``lo <= j <= hi``
    ((L, n) each): the running sum of the extents' lengths, ``(L n + 1,)`` int64; its last
    entry is the plan's length."""
    length = (hi - lo + 1).clamp_min(0).reshape(-1).to(torch.int64)
    return torch.cat([length.new_zeros(1), torch.cumsum(length, 0)])


def compact_rows(p: Tensor, start: Tensor, width: int, lo: Tensor, hi: Tensor, offsets: Tensor,
                 tiny: float = 0.0) -> Tensor:
    r"""The extents ``lo <= j <= hi`` of a padded plan ``p`` (L, n, W), compact at ``offsets``
    (:func:`compact_offsets`), entries below ``tiny`` as 0: flat, of ``p``'s dtype."""
    L, n = start.shape
    start, (lo, hi) = start.to(torch.int64).contiguous(), _extents(lo, hi)
    _plan_layout(p, L, n, width, None, None)
    offsets = offsets.contiguous()
    if offsets.shape != (L * n + 1,):
        raise ValueError(f"offsets must have shape {(L * n + 1,)}, got {tuple(offsets.shape)}")
    out = p.new_empty(int(offsets[-1]))
    _rows("compact_rows", p.dtype, L, n, 0, width, _ptr(p), _ptr(start), _ptr(lo), _ptr(hi), _ptr(offsets),
          float(tiny), _ptr(out))
    return out


def _plan_layout(p: Tensor, L: int, n: int, width: int, offsets: Tensor | None,
                 lo: Tensor | None) -> Tensor | None:
    # a padded plan is (L, n, W); a compact one is flat, as long as its offsets say
    if offsets is None:
        if p.shape != (L, n, width) or not p.is_contiguous():
            raise ValueError(f"the plan must be a contiguous tensor of shape {(L, n, width)}, "
                             f"got {tuple(p.shape)}")
        return None
    if lo is None:
        raise ValueError("a compact plan needs the extents lo and hi")
    offsets = offsets.to(torch.int64).contiguous()
    if offsets.shape != (L * n + 1,) or p.dim() != 1 or not p.is_contiguous() or p.numel() < int(offsets[-1]):
        raise ValueError(f"a compact plan must be a flat contiguous tensor of at least the offsets' last entry "
                         f"and offsets of shape {(L * n + 1,)}; got {tuple(p.shape)} and {tuple(offsets.shape)}")
    return offsets


def exp_rows(x: Tensor, y: Tensor, start: Tensor, width: int, theta: Tensor, lo: Tensor | None = None,
             hi: Tensor | None = None, out: Tensor | None = None, row_sum: Tensor | None = None,
             offsets: Tensor | None = None, floor: float | None = None) -> Tensor:
    r""":math:`\exp(x_{li} + y_{lj} + \theta_{lik})`, ``j = start_{li} + k``, on row ``i``'s extent
    and 0 elsewhere in its window: ``x`` (L, n), ``y`` (L, m), ``theta`` (L, n, W) -> (L, n, W),
    written into ``out`` (contiguous, of that shape, of ``x``'s dtype or float32 for float64
    ``x``) when given; with ``offsets`` (:func:`compact_offsets`) ``out`` is compact, the
    extents only. ``row_sum`` (L, n), when given, receives the row sums, computed in ``x``'s
    dtype before the entries are rounded to ``out``'s. Entries whose log is at most ``floor``
    are 0 (default: where ``exp`` underflows)."""
    L, m = y.shape
    n = start.shape[1]
    x, y, start, theta = x.contiguous(), y.contiguous(), _windows(start, width, m), theta.contiguous()
    lo, hi = _extents(lo, hi)
    if out is None:
        if offsets is not None:
            raise ValueError("a compact plan needs out")
        out = x.new_empty(L, n, width)
    offsets = _plan_layout(out, L, n, width, offsets, lo)
    if row_sum is not None and (row_sum.shape != (L, n) or row_sum.dtype != x.dtype
                                or not row_sum.is_contiguous()):
        raise ValueError(f"row_sum must be a contiguous {x.dtype} tensor of shape {(L, n)}")
    floor = -float("inf") if floor is None else float(floor)  # the kernel raises it to its underflow point
    _rows("exp_rows", _plan_suffix(x.dtype, out.dtype), L, n, m, width, _ptr(x), _ptr(y), _ptr(start),
          _ptr(lo), _ptr(hi), _ptr(offsets), _ptr(theta), floor, _ptr(out), _ptr(row_sum))
    return out


def band_logits(x: Tensor, y: Tensor, fx: Tensor, fy: Tensor, gamma: Tensor, start: Tensor, width: int,
                floor: float, dtype: torch.dtype, lo: Tensor | None = None,
                hi: Tensor | None = None, transposed: bool = False) -> Tensor:
    r""":math:`\max(-((x_{li} - y_{lj})^2 - fx_{li} - fy_{lj}) / \gamma_l, floor)` on the windows
    ``j = start_{li} + k`` (float64 inputs, ``dtype`` output); the floor outside
    ``lo <= j <= hi`` when given. ``x, fx`` (L, n), ``y, fy`` (L, m), ``gamma`` (L,).
    ``transposed``: ``x`` holds the plan's columns (the subtraction order stays that of
    the rows, so both layouts agree bitwise)."""
    L, m = y.shape
    n = start.shape[1]
    x, y, fx, fy, gamma = (v.contiguous() for v in (x, y, fx, fy, gamma))
    start = _windows(start, width, m)
    lo, hi = _extents(lo, hi)
    out = torch.empty(L, n, width, dtype=dtype, device=x.device)
    _rows("band_logits", dtype, L, n, m, width, _ptr(x), _ptr(y), _ptr(fx), _ptr(fy), _ptr(gamma),
          _ptr(start), _ptr(lo), _ptr(hi), int(transposed), ctypes.c_double(floor), _ptr(out))
    return out


def _scratch(workspace: dict | None, name: str, shape: tuple[int, ...], like: Tensor, zero: bool = False) -> Tensor:
    # a buffer reused by successive calls (a fresh multi-megabyte tensor is page-faulted in
    # at about the cost of the pass that fills it)
    buf = None if workspace is None else workspace.get(name)
    if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
        buf = like.new_zeros(shape) if zero else like.new_empty(shape)
        if workspace is not None:
            workspace[name] = buf
    elif zero:
        buf.zero_()
    return buf


def band_matvec(p: Tensor, start: Tensor, width: int, xr: Tensor, xc: Tensor, lo: Tensor | None = None,
                hi: Tensor | None = None, offsets: Tensor | None = None,
                tiny: float = 0.0, workspace: dict | None = None) -> tuple[Tensor, Tensor]:
    r""":math:`(P x_c, P^\top x_r)` for the band ``p`` (L, n, W) in row layout (entries on each
    row's extent, those below ``tiny`` read as zeros), in one pass: ``xr`` (L, n), ``xc`` (L, m)
    -> ``(L, n), (L, m)``. ``p`` may be float32 with float64 vectors (products and sums in
    float64), and compact (``offsets``). With a ``workspace`` dict the results lie in its
    buffers, which the next call with it overwrites."""
    L, n = start.shape
    m, W = xc.shape[1], width
    start, xr, xc = _windows(start, width, m), xr.contiguous(), xc.contiguous()
    lo, hi = _extents(lo, hi)
    offsets = _plan_layout(p, L, n, width, offsets, lo)
    yr = _scratch(workspace, "matvec_r", (L, n), xr)
    yc = _scratch(workspace, "matvec_c", (_threads(L, n, W), L, m), xc, zero=True)  # row ranges share columns
    _rows("band_matvec", _plan_suffix(xr.dtype, p.dtype), L, n, m, W, _ptr(p), _ptr(start), _ptr(lo),
          _ptr(hi), _ptr(offsets), float(tiny), _ptr(xr), _ptr(xc), _ptr(yr), accumulators=list(yc))
    return yr, yc.sum(0) if yc.shape[0] > 1 else yc[0]


def band_laplacian(p: Tensor, start: Tensor, width: int, xr: Tensor, xc: Tensor, lo: Tensor | None = None,
                   hi: Tensor | None = None, offsets: Tensor | None = None, tiny: float = 0.0,
                   workspace: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    r"""The bipartite Laplacian of the band ``p`` applied to ``(x_r, x_c)`` in difference form,
    :math:`q_{r,i} = \sum_j p_{ij}(x_{r,i} - x_{c,j})`, :math:`q_{c,j} = \sum_i p_{ij}(x_{c,j} - x_{r,i})`,
    and the quadratic form :math:`\sum_{ij} p_{ij}(x_{r,i} - x_{c,j})^2` per slice, in one pass
    (layouts as :func:`band_matvec`): ``(L, n), (L, m), (L,)``. With a ``workspace`` dict the
    results lie in its buffers, which the next call with it overwrites."""
    L, n = start.shape
    m, W = xc.shape[1], width
    start, xr, xc = _windows(start, width, m), xr.contiguous(), xc.contiguous()
    lo, hi = _extents(lo, hi)
    offsets = _plan_layout(p, L, n, width, offsets, lo)
    qr = _scratch(workspace, "laplacian_r", (L, n), xr)
    # per thread: the columns' sums, then the slices' quadratic forms
    acc = _scratch(workspace, "laplacian_acc", (_threads(L, n, W), L * m + L), xc, zero=True)
    _rows("band_laplacian", _plan_suffix(xr.dtype, p.dtype), L, n, m, W, _ptr(p), _ptr(start), _ptr(lo),
          _ptr(hi), _ptr(offsets), float(tiny), _ptr(xr), _ptr(xc), _ptr(qr), accumulators=list(acc))
    total = acc.sum(0) if acc.shape[0] > 1 else acc[0]
    return qr, total[:L * m].view(L, m), total[L * m:]


def row_cost(p: Tensor, start: Tensor, width: int, x: Tensor, y: Tensor, lo: Tensor | None = None,
             hi: Tensor | None = None, offsets: Tensor | None = None) -> Tensor:
    r""":math:`\sum_k p_{lik} (x_{li} - y_{lj})^2`, ``j = start_{li} + k``, per row over the
    extents: the plan ``p`` (padded (L, n, W), or compact with ``offsets``), ``x`` (L, n),
    ``y`` (L, m) -> (L, n)."""
    L, n = start.shape
    m = y.shape[1]
    start, x, y = _windows(start, width, m), x.contiguous(), y.contiguous()
    lo, hi = _extents(lo, hi)
    offsets = _plan_layout(p, L, n, width, offsets, lo)
    out = x.new_empty(L, n)
    _rows("row_cost", _plan_suffix(x.dtype, p.dtype), L, n, m, width, _ptr(p), _ptr(start), _ptr(lo), _ptr(hi),
          _ptr(offsets), _ptr(x), _ptr(y), _ptr(out))
    return out


def sorted_search(seq: Tensor, values: Tensor, right: bool) -> Tensor | None:
    r"""``torch.searchsorted(seq, values, right=right)`` for non-decreasing ``values`` by one
    merge, O(n + m) instead of O(n log m): ``seq`` (L, m), ``values`` (L, n), both float64 or
    both int64, on CPU. None where the kernels cannot take them."""
    if _library() is None or seq.device.type != "cpu" or values.device.type != "cpu" or \
            seq.dtype != values.dtype or seq.dtype not in (torch.float64, torch.int64) or seq.dim() != 2 \
            or values.dim() != 2 or seq.shape[0] != values.shape[0]:
        return None
    seq, values = seq.contiguous(), values.contiguous()
    out = torch.empty(values.shape, dtype=torch.int64)
    suf = "f64" if seq.dtype == torch.float64 else "i64"
    getattr(_library(), f"sorted_search_{suf}")(seq.shape[0], seq.shape[1], values.shape[1], _ptr(seq),
                                                 _ptr(values), int(right), _ptr(out))
    return out


def band_extent(s: Tensor, t: Tensor, f0: Tensor, g0: Tensor, gamma: Tensor, phi: Tensor | None,
                psi: Tensor | None, ca: Tensor | None, cb: Tensor | None, thr: float, anchor_lo: Tensor,
                anchor_hi: Tensor) -> tuple[Tensor, Tensor] | None:
    r"""Per row, the farthest columns left of ``anchor_lo`` and right of ``anchor_hi`` with
    :math:`\phi_i + \psi_j - ((s_i - t_j)^2 - f^0_i - g^0_j)/\gamma - c^a_i - c^b_j \ge thr`
    (unimodal along the row, true at the anchors), by galloping search: float64 ``s, f0, phi,
    ca`` (L, n), ``t, g0, psi, cb`` (L, m), ``gamma`` (L,); None terms are zero. None where
    the kernels cannot take them."""
    vecs = [s, t, f0, g0, gamma] + [v for v in (phi, psi, ca, cb) if v is not None]
    if _library() is None or any(v.device.type != "cpu" or v.dtype != torch.float64 for v in vecs):
        return None
    L, n = s.shape
    m = t.shape[1]
    args = [None if v is None else v.detach().contiguous() for v in (s, t, f0, g0, gamma, phi, psi, ca, cb)]
    a_lo, a_hi = anchor_lo.to(torch.int64).contiguous(), anchor_hi.to(torch.int64).contiguous()
    lo, hi = torch.empty_like(a_lo), torch.empty_like(a_hi)
    _library().band_extent(L, n, m, *(_ptr(v) for v in args), ctypes.c_double(thr), _ptr(a_lo), _ptr(a_hi),
                           _ptr(lo), _ptr(hi))
    return lo, hi


# the passes around the solver, in their own modules (they use the helpers above)
from ._adjoint import implicit_grad, product_sums, row_cost_grad  # noqa: E402
from ._cg import cg_direction, cg_step  # noqa: E402
from ._dual import certify_band, link_relaxation  # noqa: E402
from ._geometry import chart_scores, chart_scores_backward, window_costs, window_costs_grad  # noqa: E402
from ._sort import sort_rows  # noqa: E402
from ._staircase import (  # noqa: E402
    STAIRCASE_WIDTH,
    band_cut_diff,
    path_precondition,
    staircase_factor,
    staircase_precondition,
    staircase_weights,
)
from ._sweep import LogitReference, col_sums_kept, kept_plan, row_dot, sweep_cols, sweep_rows, sweep_shift  # noqa: E402
from ._votes import votes_topk  # noqa: E402
