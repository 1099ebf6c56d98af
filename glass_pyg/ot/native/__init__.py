r"""Compiled CPU kernels for the band passes of the banded solver.

Each windowed reduction of the solver (``logsumexp`` over a row's window,
the plan's ``exp``, the windowed matrix-vector product) is one pass over the
band in C instead of a gather, a band-sized temporary and a reduction in
torch: 2-6x less time per pass on CPU (``benchmarks/sinkhorn.py``). The
source ships with the package and is compiled on first use with the system C
compiler into ``$GLASS_PYG_CACHE`` (default ``~/.cache/glass_pyg``), keyed by
the source, the flags and the machine. Without a compiler, with
``GLASS_PYG_NATIVE=0``, on accelerators, or when autograd must see the
operation, the solver uses its torch implementation; :func:`status` says which
and why. Both give the same numbers to rounding.

Rows are split between ``torch.get_num_threads()`` threads (the calls release
the interpreter lock).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

_SOURCE = Path(__file__).with_name("band_kernels.c")
# no FMA contraction: logits must round exactly as the torch implementation's
_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off"]
_PARALLEL_MIN_ENTRIES = 1 << 16
_lock = threading.Lock()
_state: dict = {"lib": None, "reason": None, "tried": False, "disabled": False, "pool": None,
          "pool_size": 0}


def _cpu_flags() -> list[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= words else []


def _cache_dir() -> Path:
    root = os.environ.get("GLASS_PYG_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glass_pyg"


def _compile() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    flags = _BASE_FLAGS + _cpu_flags()
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *flags, platform.platform()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"band_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # compile next to the target and rename: concurrent processes never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([compiler, *flags, str(_SOURCE), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    for suf, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        getattr(lib, f"lse_windows_{suf}").argtypes = [i64] * 6 + [ptr] * 4
        getattr(lib, f"exp_windows_{suf}").argtypes = [i64] * 6 + [ptr] * 5
        getattr(lib, f"window_dot_{suf}").argtypes = [i64] * 6 + [ptr] * 4
        getattr(lib, f"band_logits_{suf}").argtypes = [i64] * 6 + [ptr] * 8 + [i64, ctypes.c_double, ptr]
        getattr(lib, f"clean_rows_{suf}").argtypes = [i64] * 6 + [ptr, real, ptr]
        getattr(lib, f"band_cut_diff_{suf}").argtypes = [i64] * 6 + [ptr] * 5
        getattr(lib, f"band_matvec_{suf}").argtypes = [i64] * 6 + [ptr] * 6
        getattr(lib, f"path_precondition_{suf}").argtypes = [i64] * 3 + [ptr] * 10
    return lib


def _library() -> ctypes.CDLL | None:
    if _state["disabled"]:
        return None
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                if os.environ.get("GLASS_PYG_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
                    _state["reason"] = "disabled by GLASS_PYG_NATIVE"
                else:
                    try:
                        _state["lib"] = _compile()
                    except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                        _state["reason"] = f"not built: {exc}"
                _state["tried"] = True
    return _state["lib"]


def status() -> str:
    r"""Whether the compiled kernels are in use on CPU, and if not, why."""
    lib = _library()
    if _state["disabled"]:
        return "torch (compiled kernels switched off by native.disabled())"
    return "compiled (" + " ".join(_cpu_flags()) + ")" if lib is not None else "torch (" + str(_state["reason"]) + ")"


@contextmanager
def disabled() -> Iterator[None]:
    r"""Use the torch implementation inside the block (tests compare the two)."""
    before = _state["disabled"]
    _state["disabled"] = True
    try:
        yield
    finally:
        _state["disabled"] = before


def usable(*tensors: Tensor) -> bool:
    r"""True when the compiled kernels can take these tensors: CPU, one float dtype,
    and no autograd graph to record."""
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64):
        return False
    grad = torch.is_grad_enabled()
    for x in tensors:
        if x.device.type != "cpu" or x.dtype != dtype or (grad and x.requires_grad):
            return False
    return _library() is not None


def _threads(L: int, n: int, width: int) -> int:
    threads = max(1, torch.get_num_threads())
    return 1 if L * n * width < _PARALLEL_MIN_ENTRIES or n < 2 * threads else threads


def _parallel(calls: list[tuple]) -> None:
    if len(calls) == 1:
        calls[0][0](*calls[0][1:])
        return
    if _state["pool"] is None or _state["pool_size"] != len(calls):
        _state["pool"] = ThreadPoolExecutor(max_workers=len(calls), thread_name_prefix="glass_pyg")
        _state["pool_size"] = len(calls)
    for f in [_state["pool"].submit(*c) for c in calls]:
        f.result()


def _run(fn, L: int, n: int, width: int, *args) -> None:
    r"""``fn(L, n, m, W, i0, i1, ...)`` over the rows, split between threads."""
    threads = _threads(L, n, width)
    bounds = [n * k // threads for k in range(threads + 1)]
    _parallel([(fn, *args[:4], lo, hi, *args[4:]) for lo, hi in zip(bounds[:-1], bounds[1:])])


def _windows(start: Tensor, width: int, m: int) -> Tensor:
    # the kernels read x[start + k] unchecked: a window past the end is an error, not a read
    start = start.to(torch.int64).contiguous()
    if start.numel() and (int(start.min()) < 0 or int(start.max()) > m - width):
        raise ValueError(f"band windows of width {width} leave the vector of length {m}")
    return start


def _ptr(x: Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(x.data_ptr())


def lse_windows(x: Tensor, start: Tensor, width: int, theta: Tensor) -> Tensor:
    r""":math:`\log\sum_k \exp(x_{l, start_{li} + k} + \theta_{lik})`: ``x`` (L, m),
    ``start`` (L, n) int64, ``theta`` (L, n, W) -> (L, n)."""
    lib = _library()
    L, m = x.shape
    n = start.shape[1]
    x, start, theta = x.contiguous(), _windows(start, width, m), theta.contiguous()
    out = x.new_empty(L, n)
    fn = getattr(lib, "lse_windows_" + _suffix(x))
    _run(fn, L, n, width, L, n, m, width, _ptr(x), _ptr(start), _ptr(theta), _ptr(out))
    return out


def exp_windows(x: Tensor, y: Tensor, start: Tensor, width: int, theta: Tensor,
                out: Tensor | None = None) -> Tensor:
    r""":math:`\exp(x_{li} + y_{l, start_{li} + k} + \theta_{lik})`: ``x`` (L, n),
    ``y`` (L, m), ``start`` (L, n) int64, ``theta`` (L, n, W) -> (L, n, W), written
    into ``out`` (contiguous, of that shape and dtype) when given."""
    lib = _library()
    L, m = y.shape
    n = start.shape[1]
    x, y, start, theta = x.contiguous(), y.contiguous(), _windows(start, width, m), theta.contiguous()
    if out is None:
        out = x.new_empty(L, n, width)
    elif out.shape != (L, n, width) or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {(L, n, width)}")
    fn = getattr(lib, "exp_windows_" + _suffix(x))
    _run(fn, L, n, width, L, n, m, width, _ptr(x), _ptr(y), _ptr(start), _ptr(theta), _ptr(out))
    return out


def window_dot(p: Tensor, x: Tensor, start: Tensor, width: int) -> Tensor:
    r""":math:`\sum_k p_{lik}\, x_{l, start_{li} + k}`: ``p`` (L, n, W), ``x`` (L, m),
    ``start`` (L, n) int64 -> (L, n)."""
    lib = _library()
    L, m = x.shape
    n = start.shape[1]
    p, x, start = p.contiguous(), x.contiguous(), _windows(start, width, m)
    out = x.new_empty(L, n)
    fn = getattr(lib, "window_dot_" + _suffix(x))
    _run(fn, L, n, width, L, n, m, width, _ptr(p), _ptr(x), _ptr(start), _ptr(out))
    return out


def band_logits(x: Tensor, y: Tensor, fx: Tensor, fy: Tensor, gamma: Tensor, start: Tensor, width: int,
                floor: float, dtype: torch.dtype, lo: Tensor | None = None,
                hi: Tensor | None = None, transposed: bool = False) -> Tensor:
    r""":math:`\max(-((x_{li} - y_{lj})^2 - fx_{li} - fy_{lj}) / \gamma_l, floor)` on the windows
    ``j = start_{li} + k`` (float64 inputs, ``dtype`` output); the floor outside
    ``lo <= j <= hi`` when given. ``x, fx`` (L, n), ``y, fy`` (L, m), ``gamma`` (L,).
    ``transposed``: ``x`` holds the plan's columns (the subtraction order stays that of
    the rows, so both layouts agree bitwise)."""
    lib = _library()
    L, m = y.shape
    n = start.shape[1]
    x, y, fx, fy, gamma = (v.contiguous() for v in (x, y, fx, fy, gamma))
    start = _windows(start, width, m)
    out = torch.empty(L, n, width, dtype=dtype, device=x.device)
    no = ctypes.c_void_p(None)
    lo_p = _ptr(lo := lo.to(torch.int64).contiguous()) if lo is not None else no
    hi_p = _ptr(hi := hi.to(torch.int64).contiguous()) if hi is not None else no
    fn = getattr(lib, "band_logits_" + _suffix(out))
    _run(fn, L, n, width, L, n, m, width, _ptr(x), _ptr(y), _ptr(fx), _ptr(fy), _ptr(gamma),
         _ptr(start), lo_p, hi_p, int(transposed), ctypes.c_double(floor), _ptr(out))
    return out


def clean_rows(p: Tensor, tiny: float) -> Tensor:
    r"""Zero the entries of ``p`` (L, n, W), contiguous, below ``tiny`` in place; the row sums (L, n)."""
    lib = _library()
    L, n, W = p.shape
    if not p.is_contiguous():
        raise ValueError("clean_rows needs a contiguous band")
    sums = p.new_empty(L, n)
    fn = getattr(lib, "clean_rows_" + _suffix(p))
    _run(fn, L, n, W, L, n, 0, W, _ptr(p), tiny, _ptr(sums))
    return sums


def band_cut_diff(p: Tensor, start: Tensor, width: int, row_pos: Tensor, col_pos: Tensor) -> Tensor:
    r"""Differences of the path cut weights (L, n + m): entry ``(i, j)`` of ``p`` adds
    ``p_{ij} |pos_i - pos_j|`` at the lower and removes it at the higher position."""
    lib = _library()
    L, n, W = p.shape
    m = col_pos.shape[1]
    p, start = p.contiguous(), _windows(start, width, m)
    row_pos, col_pos = row_pos.to(torch.int64).contiguous(), col_pos.to(torch.int64).contiguous()
    diff = p.new_zeros(L, n + m)
    getattr(lib, "band_cut_diff_" + _suffix(p))(L, n, m, W, 0, n, _ptr(p), _ptr(start), _ptr(row_pos),
                                                 _ptr(col_pos), _ptr(diff))
    return diff


def band_matvec(p: Tensor, start: Tensor, width: int, xr: Tensor, xc: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`(P x_c, P^\top x_r)` for the band ``p`` (L, n, W) in row layout, in one pass:
    ``xr`` (L, n), ``xc`` (L, m) -> ``(L, n), (L, m)``."""
    lib = _library()
    L, n, W = p.shape
    m = xc.shape[1]
    p, start, xr, xc = p.contiguous(), _windows(start, width, m), xr.contiguous(), xc.contiguous()
    fn = getattr(lib, "band_matvec_" + _suffix(p))
    yr = xr.new_empty(L, n)
    threads = _threads(L, n, W)
    # the column products of neighbouring row ranges overlap: one accumulator per thread
    yc = xc.new_zeros(threads, L, m)
    bounds = [n * k // threads for k in range(threads + 1)]
    calls = [(fn, L, n, m, W, lo, hi, _ptr(p), _ptr(start), _ptr(xr), _ptr(xc), _ptr(yr), _ptr(yc[k]))
             for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    _parallel(calls)
    return yr, yc.sum(0) if threads > 1 else yc[0]


def path_precondition(row_pos: Tensor, col_pos: Tensor, yr: Tensor, yc: Tensor, cut: Tensor,
                      inv_r: Tensor, inv_c: Tensor) -> tuple[Tensor, Tensor]:
    r"""The path preconditioner of :class:`~glass_pyg.ot.laplacian.BandOperator` in one pass."""
    lib = _library()
    L, n = yr.shape
    m = yc.shape[1]
    args = [v.contiguous() for v in (row_pos, col_pos, yr, yc, cut, inv_r, inv_c)]
    if args[0].dtype != torch.int64 or args[1].dtype != torch.int64:
        raise ValueError("row_pos and col_pos must be int64")
    z, xr, xc = yr.new_empty(L, n + m), torch.empty_like(yr), torch.empty_like(yc)
    getattr(lib, "path_precondition_" + _suffix(yr))(L, n, m, *(_ptr(v) for v in args), _ptr(z), _ptr(xr),
                                                      _ptr(xc))
    return xr, xc


def _suffix(x: Tensor) -> str:
    return "f64" if x.dtype == torch.float64 else "f32"
