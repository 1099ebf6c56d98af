"""Memory settings of a process that glass-pyg owns (the command, the benchmarks).

A training step at large ``n`` allocates band-sized tensors (the plan, the lifted costs, the
solver's workspace) and frees them before the next step. glibc returns allocations above its
mmap threshold (at most 32 MiB) to the operating system when they are freed, so every step
page-faults them in again, zero-filled; on virtual machines that is several times the cost of a
pass over the same memory. Keeping freed memory in the process (no mmap for large blocks, no
trimming of the heap) makes the next step reuse it; the process then stays at its peak
resident size, which a training loop reaches every step anyway.
"""
from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_USER_SETTINGS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")


def retain_freed_memory() -> bool:
    """Keep memory freed by the process for its later allocations (glibc on Linux: ``mallopt``
    with no mmap for large blocks and no heap trimming), unless the user set glibc's malloc
    variables (``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_MMAP_MAX_``, ... or ``GLIBC_TUNABLES``),
    which then stay in force. Returns whether the setting was applied."""
    if not sys.platform.startswith("linux"):
        return False
    if any(name in os.environ for name in _USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 disables trimming (man mallopt); 0 mmap'ed blocks sends every allocation to the heap
    return bool(mallopt(_M_TRIM_THRESHOLD, -1)) and bool(mallopt(_M_MMAP_MAX, 0))
