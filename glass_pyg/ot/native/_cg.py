r"""Compiled vector work of the conjugate gradient on a band's Laplacian (one pass per update)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library, _ptr, _suffix


def _vectors(L: int, n: int, m: int, rows: tuple[Tensor, ...], cols: tuple[Tensor, ...],
             scalars: tuple[Tensor, ...] = ()) -> torch.dtype:
    # the kernels below write in place through raw pointers: every vector must be exactly this
    dtype = rows[0].dtype
    for shape, group in (((L, n), rows), ((L, m), cols), ((L,), scalars)):
        for v in group:
            if v.shape != shape or v.dtype != dtype or not v.is_contiguous() or v.device.type != "cpu":
                raise ValueError(f"expected contiguous {dtype} CPU vectors of shape {shape}, got "
                                 f"{v.dtype} {tuple(v.shape)}")
    return dtype


def cg_step(alpha: Tensor, xr: Tensor, xc: Tensor, rr: Tensor, rc: Tensor, pr: Tensor, pc: Tensor,
            qr: Tensor, qc: Tensor) -> Tensor:
    r"""One conjugate-gradient update in place, :math:`x \mathrel{+}= \alpha p`,
    :math:`r \mathrel{-}= \alpha q` (``alpha`` ``(L,)``); returns :math:`\langle r, r\rangle`
    per slice."""
    (L, n), m = xr.shape, xc.shape[1]
    dtype = _vectors(L, n, m, (xr, rr, pr, qr), (xc, rc, pc, qc), (alpha,))
    dot = xr.new_empty(L)
    getattr(_library(), "cg_step_" + _suffix(dtype))(
        L, n, m, _ptr(alpha), _ptr(xr), _ptr(xc), _ptr(rr), _ptr(rc), _ptr(pr), _ptr(pc), _ptr(qr), _ptr(qc),
        _ptr(dot))
    return dot


def cg_direction(beta: Tensor, pr: Tensor, pc: Tensor, zr: Tensor, zc: Tensor) -> None:
    r"""The next search direction in place, :math:`p \leftarrow \beta p + z` (``beta`` ``(L,)``)."""
    (L, n), m = pr.shape, pc.shape[1]
    dtype = _vectors(L, n, m, (pr, zr), (pc, zc), (beta,))
    getattr(_library(), "cg_direction_" + _suffix(dtype))(L, n, m, _ptr(beta), _ptr(pr), _ptr(pc), _ptr(zr),
                                                          _ptr(zc))
