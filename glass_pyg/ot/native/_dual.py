r"""Compiled pass of the solver's reference dual (the relaxed staircase links)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library, _ptr


def link_relaxation(x: Tensor, y: Tensor, x_start: Tensor, y_start: Tensor, parent: Tensor,
                    gamma: Tensor) -> Tensor | None:
    r"""Reduced cost of each node's relaxed staircase link
    (:func:`~glass_pyg.ot._band.reference_dual`): float64 scores ``x`` and cell starts
    ``x_start`` (L, n) of one side, ``y``, ``y_start`` (L, m) of the other, ``parent`` (L, n)
    int64 (the other side's latest cell before each node, -1 for none), ``gamma`` (L,) ->
    (L, n). None where the kernels cannot take them."""
    vecs = (x, y, x_start, y_start, gamma)
    if _library() is None or any(v.device.type != "cpu" or v.dtype != torch.float64 for v in vecs) or \
            parent.device.type != "cpu":
        return None
    L, n = x.shape
    m = y.shape[1]
    args = [v.detach().contiguous() for v in vecs]
    parent = parent.to(torch.int64).contiguous()
    out = torch.empty_like(args[0])
    _library().link_relaxation(L, n, m, *(_ptr(v) for v in args[:4]), _ptr(parent), _ptr(args[4]), _ptr(out))
    return out
