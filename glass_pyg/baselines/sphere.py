r"""Point-set matchers on S^2: assignment on the geodesic cost, and Gromov-Wasserstein.

Inputs are ``(n, 3)`` and ``(m, 3)`` unit vectors (numpy or torch);
outputs are :class:`~glass_pyg.baselines.graph.Matching`.
"""
from __future__ import annotations

import numpy as np
import torch

from .._optional import require
from ..geometry.sphere import pairwise_geodesic_distance
from .graph import Matching, assign


def _geodesic(x, y) -> np.ndarray:
    x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(y), dtype=torch.float64)
    return pairwise_geodesic_distance(x, y).numpy()


def geodesic_lap(x, y) -> Matching:
    r"""Assignment minimising :math:`\sum_i d(x_i, y_{\pi(i)})^2` (exact without rotation).

    Args:
        x (Tensor or ndarray): ``(n, 3)`` source unit vectors.
        y (Tensor or ndarray): ``(m, 3)`` target unit vectors.

    Returns:
        Matching: the assignment and minus the squared distances as ``similarity``.

    Example:
        >>> import torch
        >>> from glass_pyg.baselines import geodesic_lap
        >>> from glass_pyg.geometry import normalize
        >>> x = normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
        >>> geodesic_lap(x, x[[2, 0, 1, 5, 3, 4]]).perm.tolist()
        [1, 2, 0, 4, 5, 3]
    """
    d2 = _geodesic(x, y) ** 2
    return Matching(assign(-d2), -d2)


def sphere_gw(x, y, epsilon: float = 5e-3, max_iter: int = 1000, tol: float = 1e-9) -> Matching:
    r"""POT entropic Gromov-Wasserstein between the geodesic distance matrices.

    Rotation-invariant (it sees only distances within each set), so it also
    matches rotated sets, up to the symmetries of the point cloud.

    Args:
        x (Tensor or ndarray): ``(n, 3)`` source unit vectors.
        y (Tensor or ndarray): ``(m, 3)`` target unit vectors.
        epsilon (float): entropic regularisation. Default ``0.005``.
        max_iter (int): outer iterations of POT. Default ``1000``.
        tol (float): POT's stopping tolerance. Default ``1e-9``.

    Returns:
        Matching: the assignment of the plan and the plan as ``similarity``.

    Raises:
        ImportError: when POT is missing (the ``bench`` extra installs it).

    Example:
        >>> import torch
        >>> from glass_pyg.baselines import sphere_gw
        >>> from glass_pyg.datasets import SpherePairDataset
        >>> pair = SpherePairDataset(n=64, noise_deg=0.0, seed=0)[0]
        >>> m = sphere_gw(pair.pos_s, pair.pos_t)                              # needs POT
        >>> m.perm.shape
        (64,)
    """
    ot = require("ot", "the entropic GW baseline")
    cx, cy = _geodesic(x, x), _geodesic(y, y)
    n, m = cx.shape[0], cy.shape[0]
    plan = np.asarray(ot.gromov.entropic_gromov_wasserstein(
        cx, cy, np.full(n, 1.0 / n), np.full(m, 1.0 / m), "square_loss", epsilon=epsilon,
        max_iter=max_iter, tol=tol))
    if not np.isfinite(plan).all():
        raise FloatingPointError("entropic GW returned a non-finite plan")
    return Matching(assign(plan), plan)
