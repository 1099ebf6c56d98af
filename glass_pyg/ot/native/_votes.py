r"""The compiled count of a graph refinement's neighbourhood votes (see
:mod:`glass_pyg.refinement`)."""
from __future__ import annotations

import torch
from torch import Tensor

from . import _library, _parallel, _ptr, _ranges


def votes_topk(s_ptr: Tensor, s_idx: Tensor, perm: Tensor, t_ptr: Tensor, t_idx: Tensor, m: int,
               keep: int) -> tuple[Tensor, Tensor] | None:
    r"""The ``keep`` largest neighbourhood votes of every row of :math:`W = A_s \Pi A_t^\top`.

    ``A_s`` (n x n) and ``A_t`` (m x m) are symmetric 0/1 adjacencies given by their CSR
    arrays (no duplicate entries; ``m < 2^31``), ``perm`` (n,) the matching (``-1``: unmatched).
    Row ``i`` of ``W`` counts, per target ``j``, the neighbours of ``i`` matched to neighbours of
    ``j``; ties at the ``keep``-th count go to the smaller columns. Returns ``(cols, votes)``,
    both ``(n, keep)`` (int64, int32), ``cols`` ``-1`` past a row's entries; None without the
    compiled kernels. ``O(sum_i sum_{k ~ i} deg(perm[k]))`` time, rows split between threads.
    """
    if _library() is None:
        return None
    if m >= 2 ** 31:
        return None
    args = [x.detach().cpu().to(torch.int32 if k in (1, 4) else torch.int64).contiguous()
            for k, x in enumerate((s_ptr, s_idx, perm, t_ptr, t_idx))]
    n = args[0].numel() - 1
    max_deg = int((args[0][1:] - args[0][:-1]).max()) if n > 0 else 0
    cols = torch.empty(n, keep, dtype=torch.int64)
    votes = torch.empty(n, keep, dtype=torch.int32)
    threads = max(1, min(torch.get_num_threads(), n // 64 or 1))
    calls, work = [], []
    for lo, hi in _ranges(n, threads):
        # touched has one spare slot: the kernel writes a column before it knows whether it is new
        space = (torch.zeros(m, dtype=torch.int32), torch.empty(m + 1, dtype=torch.int64),
                 torch.empty(m, dtype=torch.int64), torch.zeros(max_deg + 2, dtype=torch.int64))
        work.append(space)  # kept alive until the kernels return
        calls.append((_library().votes_topk, n, m, keep, lo, hi, *(_ptr(a) for a in args),
                      *(_ptr(w) for w in space), _ptr(cols), _ptr(votes)))
    _parallel(calls)
    return cols, votes
