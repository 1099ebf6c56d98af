r"""The one place glass-pyg imports geomstats.

geomstats 2.8 picks its backend from ``GEOMSTATS_BACKEND`` at first import
only, sets torch's default dtype to float64 when the pytorch backend loads,
computes in the default dtype, fails to import with numpy >= 2.4
(``numpy.trapz``), and mishandles a single base point with points of several
batch axes. This module selects the pytorch backend, restores the caller's
default dtype, shims ``numpy.trapz``, and wraps ``Hypersphere.metric``
(``log``, ``exp``, ``dist``) so calls run in float64 on 2-D batches and return
the caller's dtype and shape.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor


def import_geomstats() -> Any:
    """Import geomstats with the pytorch backend and return ``geomstats.geometry.hypersphere``."""
    loaded = sys.modules.get("geomstats.backend")
    if loaded is not None and getattr(loaded, "__name__", "") != "geomstats.pytorch":
        raise RuntimeError(
            f"geomstats was already imported with the backend {loaded.__name__!r}; glass-pyg needs the "
            "pytorch backend. Set GEOMSTATS_BACKEND=pytorch before anything imports geomstats.")
    if loaded is None:
        env = os.environ.get("GEOMSTATS_BACKEND")
        if env not in (None, "pytorch"):
            raise RuntimeError(f"GEOMSTATS_BACKEND={env!r} is set; glass-pyg needs 'pytorch'")
        os.environ["GEOMSTATS_BACKEND"] = "pytorch"
        if not hasattr(np, "trapz"):  # removed in numpy 2.4; geomstats 2.8 still calls it
            np.trapz = np.trapezoid
    dtype = torch.get_default_dtype()
    try:
        import geomstats.backend  # noqa: F401
        import geomstats.geometry.hypersphere as hypersphere
    finally:
        torch.set_default_dtype(dtype)
    return hypersphere


def hypersphere() -> Any:
    """``geomstats.geometry.hypersphere.Hypersphere(dim=2)``."""
    mod = import_geomstats()
    with float64_default():
        return mod.Hypersphere(dim=2)


@contextlib.contextmanager
def float64_default() -> Iterator[None]:
    """geomstats builds its constants in the default dtype: run its calls in float64."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)


def _call(method: str, space: Any, a: Tensor, b: Tensor) -> Tensor:
    a, b = torch.broadcast_tensors(a, b)
    shape, dtype = a.shape, a.dtype
    with float64_default():
        out = getattr(space.metric, method)(a.reshape(-1, 3).double(), b.reshape(-1, 3).double())
    out = torch.as_tensor(out).to(dtype)
    return out.reshape(shape if out.dim() == 2 else shape[:-1])


def gs_log(x: Tensor, base: Tensor, space: Any | None = None) -> Tensor:
    """geomstats' ``metric.log(x, base)`` for broadcasting ``(..., 3)`` inputs."""
    return _call("log", space or hypersphere(), x, base)


def gs_exp(v: Tensor, base: Tensor, space: Any | None = None) -> Tensor:
    """geomstats' ``metric.exp(v, base)`` for broadcasting ``(..., 3)`` inputs."""
    return _call("exp", space or hypersphere(), v, base)


def gs_dist(x: Tensor, y: Tensor, space: Any | None = None) -> Tensor:
    """geomstats' ``metric.dist(x, y)`` for broadcasting ``(..., 3)`` inputs."""
    return _call("dist", space or hypersphere(), x, y)
