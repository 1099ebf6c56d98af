r"""Windowed access to a band, processed in row blocks.

A band of ``n`` rows of width ``W`` is touched by every iteration. On CPU,
band-sized temporaries are slow twice over: each fresh multi-megabyte buffer
is page-faulted in 4 KiB at a time, and it falls out of cache between the
operations of one expression. Working through the rows in blocks of about
``2^17`` entries keeps every temporary cache-resident and reused by the
allocator (benchmarks/RESULTS.md, design measurements). Accelerators take the
band in one block.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_CPU_BLOCK_ENTRIES = 1 << 17


def window_gather(x: Tensor, start: Tensor, width: int) -> Tensor:
    r"""``out[l, i, k] = x[l, start[l, i] + k]`` for ``x`` of shape ``(L, m)``
    and ``start`` of shape ``(L, n)`` with ``start <= m - width``.

    Rows of a strided view of the flattened ``x`` are selected whole (one
    ``index_select`` of ``L n`` row indices), which is an order of magnitude
    faster than an elementwise gather and needs no ``(L, n, W)`` index table.
    """
    L, m = x.shape
    rows = x.reshape(-1).unfold(0, width, 1)  # (L m - width + 1, width), a view
    offset = start + (torch.arange(L, device=x.device) * m).unsqueeze(-1)
    return rows.index_select(0, offset.reshape(-1)).view(L, start.shape[1], width)


def window_inside(start: Tensor, width: int, lo: Tensor, hi: Tensor) -> Tensor:
    r"""``(L, rows, width)`` mask of the window entries ``j = start + k`` with ``lo <= j <= hi``
    (a band row's or column's extent); ``start``, ``lo``, ``hi`` are ``(L, rows)``."""
    j = start.unsqueeze(-1) + torch.arange(width, device=start.device)
    return (j >= lo.unsqueeze(-1)) & (j <= hi.unsqueeze(-1))


def row_blocks(L: int, n: int, width: int, device: torch.device) -> list[slice]:
    r"""Slices of the ``n`` rows, each about ``2^17`` band entries on CPU; one slice elsewhere."""
    if device.type != "cpu":
        return [slice(0, n)]
    rows = max(1, _CPU_BLOCK_ENTRIES // max(1, L * width))
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)] or [slice(0, n)]


def blockwise(fn: Callable[[slice], Tensor], L: int, n: int, width: int, device: torch.device,
              out: Tensor | None = None) -> Tensor:
    r"""``fn`` evaluated on row blocks and joined along dim 1: ``fn(slice)`` returns
    ``(L, rows, ...)`` for the rows of the slice. Autograd flows through, except
    into a given ``out``, which receives the result."""
    blocks = row_blocks(L, n, width, device)
    if out is not None:
        for sl in blocks:
            out[:, sl] = fn(sl)
        return out
    if len(blocks) == 1:
        return fn(blocks[0])
    first = fn(blocks[0])
    out = first.new_empty((first.shape[0], n, *first.shape[2:]))
    out[:, blocks[0]] = first
    for sl in blocks[1:]:
        out[:, sl] = fn(sl)
    return out


def add_to_columns(out: Tensor, x: Tensor, start: Tensor) -> None:
    r"""``out[l, start[l, i] + k] += x[l, i, k]`` for a block of rows: ``out`` ``(L, m)``
    (contiguous), ``x`` ``(L, rows, W)``, ``start`` ``(L, rows)``."""
    L, m = out.shape
    idx = start.unsqueeze(-1) + torch.arange(x.shape[-1], device=x.device) \
        + (torch.arange(L, device=x.device) * m).view(L, 1, 1)
    out.view(-1).index_add_(0, idx.reshape(-1), x.reshape(-1))
