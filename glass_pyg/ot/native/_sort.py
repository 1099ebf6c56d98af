r"""Compiled stable sort of score rows (the solver's first step)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library, _parallel, _ptr, _ranges


def sort_rows(x: Tensor) -> tuple[Tensor, Tensor] | None:
    r"""``torch.sort(x, dim=-1, stable=True)`` of float rows ``x`` (L, n) without NaN: the sorted
    values and the permutation (int64), equal to torch's (ties, the two zeros included, keep
    their order). A radix sort, linear in ``n``. None where the kernels cannot take ``x``
    (not a float32 or float64 CPU matrix, rows of ``2^32`` or more, an autograd graph to
    record)."""
    if _library() is None or x.dim() != 2 or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) \
            or (torch.is_grad_enabled() and x.requires_grad) or x.shape[1] >= 1 << 32:
        return None
    L, n = x.shape
    x = x.contiguous()
    out, perm = torch.empty_like(x), torch.empty(L, n, dtype=torch.int64)
    if x.numel() == 0:
        return out, perm
    parts = _ranges(L, max(1, min(torch.get_num_threads(), L)) if n >= 1 << 14 else 1)
    work = torch.empty(len(parts), 3 * n, dtype=torch.int64)
    fn = getattr(_library(), "radix_sort_" + ("f64" if x.dtype == torch.float64 else "f32"))
    _parallel([(fn, L, n, l0, l1, _ptr(x), _ptr(out), _ptr(perm), _ptr(work[k])) for k, (l0, l1) in enumerate(parts)])
    return out, perm
