r"""Lifted losses :math:`\langle P, D\rangle`, evaluated on the support of the plan only.

The plan of :func:`glass_pyg.ot.sinkhorn_banded` stores ``(L, n, W)`` entries;
the losses gather the geometry of those index pairs and never build an
``n x m`` matrix. With several slices the loss is the mean over slices, which
equals :math:`\langle \bar P, D\rangle` for the averaged plan :math:`\bar P`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .geometry.sphere import geodesic_distance
from .ot._row_blocks import row_blocks
from .ot.plan import TransportPlan

__all__ = ["PointPairCost", "squared_euclidean", "squared_geodesic", "lifted_loss", "lifted_loss_graph",
           "lifted_loss_sphere"]

PairCost = Callable[[Tensor, Tensor], Tensor]


class PointPairCost:
    r"""A cost :math:`D_{ij} = c(x^s_i, x^t_j)` from per-point geometry.

    ``cost(rows, cols)`` evaluates it on index pairs of any shape;
    :meth:`TransportPlan.expectation` uses ``points`` and ``pair`` to visit the
    pairs in row blocks (forward and backward) instead of gathering them all,
    and ``gram(sq_x, sq_y, inner)``, when the cost is a function of the squared
    norms and the inner product, to read the band's costs from blocks of inner
    products when the points need no gradient.

    Args:
        x_s (Tensor): ``(n, d)`` source points.
        x_t (Tensor): ``(m, d)`` target points.
        pair (callable): ``pair(x, y)`` the cost of rows of points, ``(..., d)`` each -> ``(...)``.
        name (str): shown in ``repr``.
        gram (callable, optional): the cost from ``(|x|^2, |y|^2, <x, y>)``. Default ``None``.

    Example:
        >>> import torch
        >>> from glass_pyg.losses import squared_euclidean
        >>> cost = squared_euclidean(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0], [1.0, 0.0]]))
        >>> cost(torch.tensor([0, 0]), torch.tensor([0, 1]))                    # D_00, D_01
        tensor([25.,  1.])
    """

    def __init__(self, x_s: Tensor, x_t: Tensor, pair: Callable[[Tensor, Tensor], Tensor], name: str,
                 gram: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None):
        _check_points(x_s, x_t)
        self.points = (x_s, x_t)
        self.pair = pair
        self.gram = gram
        self.name = name

    def __call__(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Costs of the index pairs ``(rows[k], cols[k])``, in the shape of ``rows``."""
        x_s, x_t = self.points
        shape, rows, cols = rows.shape, rows.flatten(), cols.flatten()
        # in the band's row blocks of gathered values on CPU, so the gathered points stay in cache
        blocks = row_blocks(1, rows.numel(), math.prod(x_s.shape[1:]), rows.device)
        parts = [self.pair(x_s[rows[sl]], x_t[cols[sl]]) for sl in blocks]
        return (parts[0] if len(parts) == 1 else torch.cat(parts)).view(shape)

    def __repr__(self) -> str:
        return f"{self.name}(n_s={self.points[0].shape[0]}, n_t={self.points[1].shape[0]})"


def _sq_euclidean_pairs(x: Tensor, y: Tensor) -> Tensor:
    diff = x - y
    return (diff * diff).sum(-1)


def _sq_euclidean_gram(sq_x: Tensor, sq_y: Tensor, inner: Tensor) -> Tensor:
    return (sq_x + sq_y - 2.0 * inner).clamp_min_(0.0)


def _sq_geodesic_pairs(x: Tensor, y: Tensor) -> Tensor:
    d = geodesic_distance(x, y)
    return d * d


def _sq_geodesic_gram(sq_x: Tensor, sq_y: Tensor, inner: Tensor) -> Tensor:
    # arccos of the cosine: theta errs by eps / theta near 0, so theta^2 by about 2 eps (absolute)
    return torch.acos((inner / (sq_x * sq_y).sqrt()).clamp_(-1.0, 1.0)).square_()


def squared_euclidean(x_s: Tensor, x_t: Tensor) -> PointPairCost:
    r"""The cost :math:`(i, j) \mapsto \lVert x^s_i - x^t_j\rVert^2` on index pairs.

    Args:
        x_s (Tensor): ``(n, d)`` source points.
        x_t (Tensor): ``(m, d)`` target points.

    Returns:
        PointPairCost: callable on index pairs ``(rows, cols)`` of any shape.

    Example:
        >>> import torch
        >>> from glass_pyg.losses import squared_euclidean
        >>> squared_euclidean(torch.zeros(1, 2), torch.tensor([[3.0, 4.0]]))(torch.tensor([0]), torch.tensor([0]))
        tensor([25.])
    """
    return PointPairCost(x_s, x_t, _sq_euclidean_pairs, "squared_euclidean", _sq_euclidean_gram)


def squared_geodesic(x_s: Tensor, x_t: Tensor) -> PointPairCost:
    r"""The cost :math:`(i, j) \mapsto d_{S^2}(x^s_i, x^t_j)^2` on index pairs of unit vectors.

    Args:
        x_s (Tensor): ``(n, 3)`` source unit vectors.
        x_t (Tensor): ``(m, 3)`` target unit vectors.

    Returns:
        PointPairCost: callable on index pairs ``(rows, cols)`` of any shape.

    Example:
        >>> import math, torch
        >>> from glass_pyg.losses import squared_geodesic
        >>> x, y = torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
        >>> abs(float(squared_geodesic(x, y)(torch.tensor([0]), torch.tensor([0]))) - (math.pi / 2) ** 2) < 1e-6
        True
    """
    return PointPairCost(x_s, x_t, _sq_geodesic_pairs, "squared_geodesic", _sq_geodesic_gram)


def lifted_loss(plan: TransportPlan, cost: PairCost, reduction: str = "mean") -> Tensor:
    r""":math:`\langle P_l, D\rangle` per slice (``reduction="none"``) or their mean.

    Args:
        plan (TransportPlan): the solver's plan.
        cost (callable): :math:`D` on index pairs, ``cost(rows, cols)``, e.g. :func:`squared_euclidean`.
        reduction (str): ``"mean"`` over the slices or ``"none"``. Default ``"mean"``.

    Returns:
        Tensor: scalar, or ``(L,)`` with ``reduction="none"``; differentiable in the plan and the points.

    Example:
        >>> import torch
        >>> from glass_pyg.losses import lifted_loss, squared_euclidean
        >>> from glass_pyg.ot import sinkhorn_banded
        >>> x = torch.linspace(0, 1, 50, dtype=torch.float64).unsqueeze(1)
        >>> plan = sinkhorn_banded(x[:, 0], x[:, 0] + 0.5, gamma=1e-4)         # nearly the shift by 0.5
        >>> round(float(lifted_loss(plan, squared_euclidean(x, x + 0.5))), 3)   # E|x_i - y_j|^2 under the plan
        0.25
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    per_slice = plan.expectation(cost)
    return per_slice.mean() if reduction == "mean" else per_slice


def lifted_loss_graph(plan: TransportPlan, psi_s: Tensor, psi_t: Tensor,
                      reduction: str = "mean") -> Tensor:
    r""":math:`L_{spec} = \langle P, \lVert \psi^X_i - \psi^Y_j\rVert^2\rangle` for node features
    ``(n, d)``, ``(m, d)``.

    Args:
        plan (TransportPlan): the solver's plan between the nodes.
        psi_s (Tensor): ``(n, d)`` source node features.
        psi_t (Tensor): ``(m, d)`` target node features.
        reduction (str): ``"mean"`` over the slices or ``"none"``. Default ``"mean"``.

    Returns:
        Tensor: scalar, or ``(L,)``.

    Example:
        >>> import torch
        >>> from glass_pyg.losses import lifted_loss_graph
        >>> from glass_pyg.ot import sinkhorn_banded
        >>> psi = torch.randn(40, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> plan = sinkhorn_banded(psi[:, 0], psi[:, 0], gamma=1e-6)          # the identity coupling
        >>> float(lifted_loss_graph(plan, psi, psi)) < 1e-4
        True
    """
    return lifted_loss(plan, squared_euclidean(psi_s, psi_t), reduction)


def lifted_loss_sphere(plan: TransportPlan, pos_s: Tensor, pos_t: Tensor,
                       reduction: str = "mean") -> Tensor:
    r""":math:`L_{geo} = \langle P, d_{S^2}(x_i, y_j)^2\rangle` for unit vectors ``(n, 3)``, ``(m, 3)``.

    Args:
        plan (TransportPlan): the solver's plan between the points.
        pos_s (Tensor): ``(n, 3)`` source unit vectors.
        pos_t (Tensor): ``(m, 3)`` target unit vectors.
        reduction (str): ``"mean"`` over the slices or ``"none"``. Default ``"mean"``.

    Returns:
        Tensor: scalar, or ``(L,)``.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize
        >>> from glass_pyg.losses import lifted_loss_sphere
        >>> from glass_pyg.ot import sinkhorn_banded
        >>> x = normalize(torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        >>> plan = sinkhorn_banded(x[:, 2], x[:, 2], gamma=1e-6)
        >>> float(lifted_loss_sphere(plan, x, x)) < 1e-4
        True
    """
    return lifted_loss(plan, squared_geodesic(pos_s, pos_t), reduction)


def _check_points(x_s: Tensor, x_t: Tensor) -> None:
    if x_s.dim() != 2 or x_t.dim() != 2 or x_s.size(1) != x_t.size(1):
        raise ValueError(f"geometry of the two sides must be (n, d) and (m, d) with the same d, got "
                         f"{tuple(x_s.shape)} and {tuple(x_t.shape)}")
