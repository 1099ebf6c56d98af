r"""Geometry of the unit sphere :math:`S^2 \subset \mathbb R^3` in plain torch."""
from __future__ import annotations

import torch
from torch import Tensor


def geodesic_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Great-circle distance :math:`\operatorname{atan2}(\lVert x\times y\rVert, x\cdot y)`.

    Stable at every angle in float32 and float64 (``arccos`` loses half the
    digits near 0 and :math:`\pi`). ``x`` and ``y`` are unit vectors of shape
    ``(..., 3)`` that broadcast; returns ``(...)``.
    """
    if x.size(-1) != 3 or y.size(-1) != 3:
        raise ValueError(f"points on S^2 must have a last axis of size 3, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = torch.broadcast_tensors(x, y)
    cross = torch.linalg.cross(x, y)
    return torch.atan2(torch.linalg.vector_norm(cross, dim=-1), (x * y).sum(-1))
