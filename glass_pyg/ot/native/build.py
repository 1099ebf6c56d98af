r"""Building and loading the compiled band kernels (see :mod:`glass_pyg.ot.native`)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from ..._atomic import atomic_path

_DIR = Path(__file__).parent
_SOURCES = (_DIR / "band_kernels.c", _DIR / "band_kernels_impl.h", _DIR / "sweep_impl.h",
            _DIR / "band_plan_impl.h",
            _DIR / "graph_votes_impl.h", _DIR / "sphere_chart_impl.h",
            _DIR / "window_costs_impl.h", _DIR / "staircase_impl.h", _DIR / "staircase_avx2.h",
            _DIR / "staircase_avx512.h", _DIR / "sort_impl.h")
# no FMA contraction: logits must round exactly as the torch implementation's
_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off"]
_lock = threading.Lock()
_state: dict = {"lib": None, "reason": None, "tried": False, "disabled": False, "pool": None,
                "pool_size": 0}
# (name, number of int64 scalars first, then pointer / int64 / double / real arguments)
_SIGNATURES = {
    "lse_rows": "iiiiii" + "ppppppp",
    "col_sums": "iiiiii" + "ppppppppp",
    "col_sums_ref": "iiiiii" + "pppp" + "ppppp" + "d" + "pppp",
    "row_dot": "iiiiii" + "ppppppp",
    "kept_plan": "iiiiii" + "ppppppp" + "r" + "pppp",
    "sweep_shift": "i" + "ppp",
    "sweep_cols": "i" + "ppp" + "rr" + "ppp",
    "sweep_rows": "ii" + "ppp" + "rr" + "ppp",
    "col_max": "iiiiii" + "pppppp",
    "exp_rows": "iiiiii" + "ppppppp" + "r" + "pp",
    "band_logits": "iiiiii" + "pppppppp" + "idp",
    "band_matvec": "iiiiii" + "ppppp" + "r" + "pppp",
    "band_cut_diff": "iiiiii" + "ppppp" + "r" + "ppp",
    "band_laplacian": "iiiiii" + "ppppp" + "r" + "pppp",
    "path_precondition": "iii" + "ppppppppppp",
    "product_sums": "iiiiii" + "ppppppp",
    "compact_rows": "iiiiii" + "ppppp" + "r" + "p",
    "window_costs": "iiiiii" + "ii" + "pppp",
    "window_costs_grad": "iiiiii" + "ii" + "ppppppp",
    "chart_scores": "iiiii" + "pppp" + "r" + "p",
    "chart_scores_backward": "iiiii" + "pppp" + "r" + "ppp",
    "implicit_grad": "iiiiii" + "pppppppppp" + "ppppp" + "d" + "pp",
    "cg_step": "iii" + "ppppppppp",
    "cg_direction": "iii" + "ppppp",
    "row_cost": "iiiiii" + "pppppppp",
    "row_cost_grad": "iiiiii" + "pppppppppp",
    "staircase_weights": "iiiiii" + "ppppp" + "r" + "ppppp",
    "staircase_factor": "iiii" + "ppppp",
    "staircase_precondition": "iiiii" + "ppppppppppppp",
}

# kernels that also take a float32 plan with float64 vectors (suffix f64p32; real scalars are double)
_MIXED = ("exp_rows", "kept_plan", "band_matvec", "band_laplacian", "band_cut_diff", "row_cost", "staircase_weights",
          "compact_rows", "product_sums", "implicit_grad", "row_cost_grad")


def _cpu_flags() -> list[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(info.split())
    if not {"avx2", "fma"} <= words:
        return []
    flags = ["-mavx2", "-mfma"]
    # AVX-512: the loops that call the vector math library (the sphere chart, the geodesic costs)
    # take its 8-wide variants; the compiler keeps its 256-bit default for the others
    if {"avx512f", "avx512dq", "avx512vl"} <= words:
        flags += ["-mavx512f", "-mavx512dq", "-mavx512vl"]
    return flags


def _cache_dir() -> Path:
    root = os.environ.get("GLASS_PYG_CACHE")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "glass_pyg"


def _check_private(path: Path, what: str) -> os.stat_result:
    """Refuse a path another user could have written: a link, not ours, or writable by group or others."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise RuntimeError(f"{what} {path} is a symbolic link; refusing it")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise RuntimeError(f"{what} {path} belongs to uid {st.st_uid}, not to this user; refusing it")
    if st.st_mode & 0o022:
        raise RuntimeError(f"{what} {path} is writable by others (mode {oct(st.st_mode & 0o777)}); refusing it")
    return st


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(target: Path, record: Path) -> bool:
    """The cached library is ours, private, and has the checksum recorded when it was built."""
    if not target.exists():
        return False
    _check_private(target, "cached library")  # another user's file is refused, never rebuilt over
    try:
        return record.read_text().strip() == _digest(target)
    except OSError:
        return False


def _build(compiler: str, flags: list[str], target: Path, record: Path) -> None:
    """Compile into a temporary file beside ``target`` (the private cache), rename it, record its checksum."""
    with atomic_path(str(target)) as tmp:
        proc = subprocess.run([compiler, *flags, str(_SOURCES[0]), "-o", tmp, "-lm"],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:500]}")
        digest = _digest(Path(tmp))
    with atomic_path(str(record)) as tmp:
        Path(tmp).write_text(digest + "\n")


def _compile() -> ctypes.CDLL:
    r"""Build (or reuse) the kernels in the per-user cache folder and load them.

    Only a private folder and library are trusted: the folder and the file must
    belong to this user and be writable by nobody else, and the library must
    match the SHA-256 recorded beside it when it was built. A truncated or
    altered library is rebuilt; another user's is refused (the solver then runs
    on torch, and :func:`status` says why).
    """
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    flags = _BASE_FLAGS + _cpu_flags()
    source = b"".join(f.read_bytes() for f in _SOURCES)
    key = hashlib.sha256(source + " ".join([compiler, *flags, platform.platform()]).encode()).hexdigest()[:16]
    folder = _cache_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(folder, "cache folder")
    target = folder / f"band_kernels-{key}.so"
    record = folder / f"band_kernels-{key}.sha256"
    if not _intact(target, record):
        _build(compiler, flags, target, record)
        if not _intact(target, record):
            raise RuntimeError(f"the library built at {target} does not match its checksum")
    lib = ctypes.CDLL(str(target))
    try:
        _bind(lib)
    except AttributeError as exc:
        raise RuntimeError(f"{target} lacks a kernel ({exc}); remove it to rebuild") from None
    return lib


def _bind(lib: ctypes.CDLL) -> None:
    """Declare the argument types of every kernel (AttributeError when one is missing)."""
    kinds = {"i": ctypes.c_int64, "p": ctypes.c_void_p, "d": ctypes.c_double}
    for name, sig in _SIGNATURES.items():
        for suf, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            getattr(lib, f"{name}_{suf}").argtypes = [kinds.get(c, real) for c in sig]
        if name in _MIXED:
            getattr(lib, f"{name}_f64p32").argtypes = [kinds.get(c, ctypes.c_double) for c in sig]
    lib.band_extent.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 9 + [ctypes.c_double] + [
        ctypes.c_void_p] * 4
    lib.link_relaxation.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 7
    lib.certify_band.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 17
    lib.votes_topk.argtypes = [ctypes.c_int64] * 5 + [ctypes.c_void_p] * 10
    for suf in ("f64", "f32"):
        getattr(lib, f"radix_sort_{suf}").argtypes = [ctypes.c_int64] * 4 + [ctypes.c_void_p] * 4
    for suf in ("f64", "i64"):
        getattr(lib, f"sorted_search_{suf}").argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [
            ctypes.c_int64, ctypes.c_void_p]


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


def usable_plan(p: Tensor, *vectors: Tensor) -> bool:
    r"""True when the compiled kernels can take the plan ``p`` with these vectors: each
    :func:`usable` on its own, and the plan of the vectors' dtype or float32 with float64
    vectors (the kernels then compute in float64)."""
    if not (usable(p) and usable(*vectors)):
        return False
    return p.dtype == vectors[0].dtype or (p.dtype == torch.float32 and vectors[0].dtype == torch.float64)
