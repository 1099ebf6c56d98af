r"""Geometry of the unit sphere :math:`S^2 \subset \mathbb R^3` in plain torch.

All maps take points as unit vectors ``(..., 3)`` that broadcast, work in
float32 and float64, and have finite values and gradients everywhere,
including ``x == base`` and antipodal points (where the log map, whose
direction is undefined, returns the zero vector).
"""
from __future__ import annotations

import torch
from torch import Tensor


def _check(*xs: Tensor) -> None:
    for x in xs:
        if x.size(-1) != 3:
            raise ValueError(f"points and vectors of S^2 need a last axis of size 3, got shape {tuple(x.shape)}")


def _safe_norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last axis with a zero (not NaN) gradient at 0."""
    sq = (v * v).sum(-1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def geodesic_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""Great-circle distance :math:`\operatorname{atan2}(\lVert x\times y\rVert, x\cdot y)`, elementwise.

    Stable at every angle (``arccos`` loses half the digits near 0 and
    :math:`\pi`). Shapes ``(..., 3)`` that broadcast; returns ``(...)``.

    Args:
        x (Tensor): ``(..., 3)`` unit vectors.
        y (Tensor): ``(..., 3)`` unit vectors.

    Returns:
        Tensor: ``(...)`` angles in :math:`[0, \pi]`.

    Example:
        >>> import math, torch
        >>> from glass_pyg.geometry import geodesic_distance
        >>> x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        >>> y = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]], dtype=torch.float64)
        >>> torch.allclose(geodesic_distance(x, y), torch.tensor([math.pi / 2, math.pi], dtype=torch.float64))
        True
    """
    _check(x, y)
    x, y = torch.broadcast_tensors(x, y)
    return torch.atan2(_safe_norm(torch.linalg.cross(x, y)), (x * y).sum(-1))


def pairwise_geodesic_distance(x: Tensor, y: Tensor) -> Tensor:
    r"""All distances between ``x`` ``(n, 3)`` and ``y`` ``(m, 3)``: ``(n, m)``.

    Args:
        x (Tensor): ``(n, 3)`` unit vectors.
        y (Tensor): ``(m, 3)`` unit vectors.

    Returns:
        Tensor: ``(n, m)`` angles in :math:`[0, \pi]`.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize, pairwise_geodesic_distance
        >>> x, y = normalize(torch.randn(5, 3)), normalize(torch.randn(7, 3))
        >>> d = pairwise_geodesic_distance(x, y)
        >>> d.shape, bool(((d >= 0) & (d <= torch.pi)).all())
        (torch.Size([5, 7]), True)
    """
    _check(x, y)
    return geodesic_distance(x.unsqueeze(-2), y.unsqueeze(-3))


def _sin_over(theta: Tensor) -> Tensor:
    r""":math:`\sin\theta / \theta` with a Taylor branch near 0."""
    small = theta.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(theta), theta)
    t2 = theta * theta
    return torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(safe) / safe)


def log_map(x: Tensor, base: Tensor) -> Tensor:
    r"""Riemannian logarithm :math:`\mathrm{Log}_{b}(x) = \frac{\theta}{\sin\theta}(x - \cos\theta\, b)`.

    :math:`\theta = d(b, x)`; the tangent vector at ``base`` of length
    :math:`\theta` pointing to ``x``. Near :math:`\theta = 0` the factor
    uses its series; at the antipode (undefined direction) the result is 0.
    Shapes ``(..., 3)`` that broadcast.

    Args:
        x (Tensor): ``(..., 3)`` unit vectors.
        base (Tensor): ``(..., 3)`` unit base points.

    Returns:
        Tensor: ``(..., 3)`` tangent vectors at ``base``.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import exp_map, log_map
        >>> base = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        >>> v = torch.tensor([0.3, -0.4, 0.0], dtype=torch.float64)
        >>> torch.allclose(log_map(exp_map(v, base), base), v)
        True
    """
    _check(x, base)
    x, base = torch.broadcast_tensors(x, base)
    cos = (x * base).sum(-1, keepdim=True)
    v = x - cos * base  # component of x tangent at base, norm sin(theta)
    sin = _safe_norm(v).unsqueeze(-1)
    theta = torch.atan2(sin, cos)
    # at the antipode the direction is undefined: return 0 there (with a zero gradient)
    antipode = (cos < 0) & (sin <= torch.finfo(x.dtype).eps ** 0.5)
    ratio = torch.where(antipode, torch.ones_like(theta), _sin_over(theta))
    return torch.where(antipode, torch.zeros_like(v), v / ratio)


def exp_map(v: Tensor, base: Tensor) -> Tensor:
    r"""Riemannian exponential
    :math:`\mathrm{Exp}_b(v) = \cos\lVert v\rVert\, b + \frac{\sin\lVert v\rVert}{\lVert v\rVert} v`.

    ``v`` tangent at ``base`` (its normal component is removed first).
    Shapes ``(..., 3)`` that broadcast.

    Args:
        v (Tensor): ``(..., 3)`` tangent vectors.
        base (Tensor): ``(..., 3)`` unit base points.

    Returns:
        Tensor: ``(..., 3)`` unit vectors.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import exp_map, geodesic_distance
        >>> base = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        >>> x = exp_map(torch.tensor([0.5, 0.0, 0.0], dtype=torch.float64), base)     # half a radian towards +x
        >>> round(float(geodesic_distance(x, base)), 12), round(float(x.norm()), 12)
        (0.5, 1.0)
    """
    _check(v, base)
    v, base = torch.broadcast_tensors(v, base)
    v = v - (v * base).sum(-1, keepdim=True) * base
    theta = _safe_norm(v).unsqueeze(-1)
    return torch.cos(theta) * base + _sin_over(theta) * v


def project_tangent(v: Tensor, base: Tensor) -> Tensor:
    r"""The component of ``v`` tangent to the sphere at ``base``.

    Args:
        v (Tensor): ``(..., 3)`` vectors.
        base (Tensor): ``(..., 3)`` unit base points.

    Returns:
        Tensor: ``(..., 3)`` :math:`v - \langle v, b\rangle b`.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import project_tangent
        >>> project_tangent(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 0.0, 1.0]))
        tensor([1., 2., 0.])
    """
    return v - (v * base).sum(-1, keepdim=True) * base


def normalize(x: Tensor) -> Tensor:
    """Points of :math:`\\mathbb R^3 \\setminus 0` radially projected onto :math:`S^2`.

    Args:
        x (Tensor): ``(..., 3)`` non-zero vectors.

    Returns:
        Tensor: ``(..., 3)`` unit vectors.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize
        >>> normalize(torch.tensor([[3.0, 0.0, 4.0]]))
        tensor([[0.6000, 0.0000, 0.8000]])
    """
    return x / _safe_norm(x).clamp_min(torch.finfo(x.dtype).tiny).unsqueeze(-1)
