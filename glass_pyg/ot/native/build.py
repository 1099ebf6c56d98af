r"""Building and loading the compiled band kernels (see :mod:`glass_pyg.ot.native`)."""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

_DIR = Path(__file__).parent
_SOURCES = (_DIR / "band_kernels.c", _DIR / "band_kernels_impl.h", _DIR / "band_plan_impl.h")
# no FMA contraction: logits must round exactly as the torch implementation's
_BASE_FLAGS = ["-O3", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math",
               "-ffp-contract=off"]
_lock = threading.Lock()
_state: dict = {"lib": None, "reason": None, "tried": False, "disabled": False, "pool": None,
                "pool_size": 0}
# (name, number of int64 scalars first, then pointer / int64 / double / real arguments)
_SIGNATURES = {
    "lse_rows": "iiiiii" + "ppppppp",
    "col_sums": "iiiiii" + "ppppppp",
    "col_max": "iiiiii" + "pppppp",
    "exp_rows": "iiiiii" + "ppppppp" + "r" + "pp",
    "band_logits": "iiiiii" + "pppppppp" + "idp",
    "clean_rows": "iiiiii" + "pr",
    "band_matvec": "iiiiii" + "ppppppppp",
    "band_cut_diff": "iiiiii" + "pppppppp",
    "path_precondition": "iii" + "pppppppppp",
    "row_cost": "iiiiii" + "pppppppp",
}

# kernels that also take a float32 plan with float64 vectors (suffix f64p32; real scalars are double)
_MIXED = ("exp_rows", "band_matvec", "band_cut_diff", "row_cost")


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
    source = b"".join(f.read_bytes() for f in _SOURCES)
    key = hashlib.sha256(source + " ".join([compiler, *flags, platform.platform()]).encode()).hexdigest()[:16]
    target = _cache_dir() / f"band_kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        # compile next to the target and rename: concurrent processes never load half a file
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([compiler, *flags, str(_SOURCES[0]), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=120)
            if proc.returncode != 0:
                raise RuntimeError(f"{compiler} failed: {proc.stderr.strip()[:500]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    kinds = {"i": ctypes.c_int64, "p": ctypes.c_void_p, "d": ctypes.c_double}
    for name, sig in _SIGNATURES.items():
        for suf, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
            getattr(lib, f"{name}_{suf}").argtypes = [kinds.get(c, real) for c in sig]
        if name in _MIXED:
            getattr(lib, f"{name}_f64p32").argtypes = [kinds.get(c, ctypes.c_double) for c in sig]
    lib.band_extent.argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 9 + [ctypes.c_double] + [
        ctypes.c_void_p] * 4
    for suf in ("f64", "i64"):
        getattr(lib, f"sorted_search_{suf}").argtypes = [ctypes.c_int64] * 3 + [ctypes.c_void_p] * 2 + [
            ctypes.c_int64, ctypes.c_void_p]
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
