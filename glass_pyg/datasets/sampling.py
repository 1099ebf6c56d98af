r"""Seeded sampling helpers for random graphs (no global RNG)."""
from __future__ import annotations

import torch
from torch import Tensor


def pair_generator(seed: int, index: int) -> torch.Generator:
    """An independent generator for item ``index`` of a dataset seeded with ``seed``."""
    mixed = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 1) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(mixed)


def distinct_pairs(k: int, n1: int, n2: int | None, gen: torch.Generator,
                   forbidden: Tensor | None = None) -> Tensor:
    r"""``k`` distinct node pairs, uniform over all ``k``-subsets.

    With ``n2 is None`` the pairs are unordered pairs ``i < j`` of ``range(n1)``
    (returned as ``(i, j)``), otherwise the cells of ``range(n1) x range(n2)``.
    ``forbidden`` holds sorted keys (``i * N + j`` with ``N = n2`` or ``n1``)
    that may not be drawn. Draws with replacement until ``k`` distinct allowed
    keys exist, then keeps a uniform ``k``-subset of them: the distinct set of
    exchangeable draws is uniform given its size, so the result is exact.
    Returns ``(k, 2)`` long.
    """
    width = n1 if n2 is None else n2
    total = n1 * (n1 - 1) // 2 if n2 is None else n1 * n2
    excluded = 0 if forbidden is None else forbidden.numel()
    if k < 0 or k > total - excluded:
        raise ValueError(f"cannot draw {k} distinct pairs from {total - excluded} available")
    if k == 0:
        return torch.zeros(0, 2, dtype=torch.long)
    keys = torch.zeros(0, dtype=torch.long)
    while keys.numel() < k:
        need = k - keys.numel()
        draw = int(need * 1.25) + 16
        i = torch.randint(0, n1, (draw,), generator=gen)
        j = torch.randint(0, width, (draw,), generator=gen)
        if n2 is None:
            ok = i != j
            i, j = torch.minimum(i[ok], j[ok]), torch.maximum(i[ok], j[ok])
        new = i * width + j
        if forbidden is not None and forbidden.numel():
            pos = torch.searchsorted(forbidden, new).clamp_max(forbidden.numel() - 1)
            new = new[forbidden[pos] != new]
        keys = torch.unique(torch.cat([keys, new]))
    keys = keys[torch.randperm(keys.numel(), generator=gen)[:k]]
    return torch.stack([keys // width, keys % width], 1)
