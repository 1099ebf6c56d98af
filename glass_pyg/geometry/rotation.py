r"""Rotations of :math:`\mathbb R^3`: Haar sampling, angles, the exponential map."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def random_rotation(num: int | None = None, *, generator: torch.Generator | None = None,
                    max_angle_deg: float | None = None, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Tensor:
    r"""Rotations drawn from the Haar measure on :math:`SO(3)`, ``(3, 3)`` or ``(num, 3, 3)``.

    QR of a Gaussian matrix with the signs of :math:`R`'s diagonal moved into
    :math:`Q` (so :math:`Q` is Haar on :math:`O(3)`), then one column flipped
    where :math:`\det Q = -1`. With ``max_angle_deg`` :math:`= b` the rotation is
    Haar conditioned on an angle :math:`\theta \le b`: a uniform axis and an
    angle drawn exactly from its conditional law, whose CDF is
    :math:`(\theta - \sin\theta)/(b - \sin b)` (inverted by bisection), so any
    bound in :math:`(0, 180]` costs the same. Sampled in float64 on the CPU from
    ``generator``, then cast.

    Args:
        num (int, optional): how many; ``None`` for a single ``(3, 3)`` matrix. Default ``None``.
        generator (torch.Generator, optional): the source of randomness. Default: a fresh one.
        max_angle_deg (float, optional): bound on the angle in degrees, in ``(0, 180]``. Default ``None``.
        dtype (torch.dtype): Default ``torch.float64``.
        device (torch.device or str, optional): Default: the CPU.

    Returns:
        Tensor: ``(3, 3)`` or ``(num, 3, 3)`` rotation matrices.

    Raises:
        ValueError: on a negative ``num`` or a bound outside ``(0, 180]``.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import random_rotation
        >>> R = random_rotation(4, generator=torch.Generator().manual_seed(0))
        >>> R.shape, torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=R.dtype).expand(4, 3, 3))
        (torch.Size([4, 3, 3]), True)
        >>> bool((torch.linalg.det(R) > 0).all())
        True
    """
    if max_angle_deg is not None and not (isinstance(max_angle_deg, (int, float))
                                          and 0 < max_angle_deg <= 180):
        raise ValueError(f"max_angle_deg must be a number in (0, 180], got {max_angle_deg!r}")
    count = 1 if num is None else num
    if not isinstance(count, int) or count < 0:
        raise ValueError(f"num must be an integer >= 0, got {num!r}")
    if max_angle_deg is None:
        g = torch.randn(count, 3, 3, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        flip = torch.linalg.det(q) < 0
        q[flip, :, 0] = -q[flip, :, 0]
    else:
        axis = torch.randn(count, 3, generator=generator, dtype=torch.float64)
        axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True).clamp_min(1e-300)
        u = torch.rand(count, generator=generator, dtype=torch.float64)
        q = so3_exp(axis * _bounded_angle(u, math.radians(float(max_angle_deg))).unsqueeze(-1))
    out = q.to(dtype=dtype, device=device)
    return out[0] if num is None else out


def _theta_minus_sin(t: Tensor) -> Tensor:
    """:math:`t - \\sin t` without cancellation for small ``t`` (series below 0.1)."""
    t2 = t * t
    series = t * t2 / 6.0 * (1.0 - t2 / 20.0 * (1.0 - t2 / 42.0 * (1.0 - t2 / 72.0)))
    return torch.where(t < 0.1, series, t - torch.sin(t))


def _bounded_angle(u: Tensor, bound: float) -> Tensor:
    """The angle of CDF :math:`(\\theta - \\sin\\theta)/(b - \\sin b)` at ``u`` in [0, 1), by bisection."""
    target = u * _theta_minus_sin(torch.tensor(bound, dtype=torch.float64))
    lo, hi = torch.zeros_like(u), torch.full_like(u, bound)
    for _ in range(64):  # halves the bracket to float64 resolution of any bound
        mid = 0.5 * (lo + hi)
        below = _theta_minus_sin(mid) < target
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return 0.5 * (lo + hi)


def rotation_angle(R: Tensor) -> Tensor:
    r"""Rotation angle in radians,
    :math:`\theta = \operatorname{atan2}(\lVert\mathrm{axial}(R - R^\top)\rVert/2, (\operatorname{tr}R - 1)/2)`.

    Args:
        R (Tensor): ``(..., 3, 3)`` rotation matrices.

    Returns:
        Tensor: ``(...)`` angles in :math:`[0, \pi]`.

    Example:
        >>> import math, torch
        >>> from glass_pyg.geometry import rotation_angle, so3_exp
        >>> R = so3_exp(torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64))
        >>> round(float(rotation_angle(R)), 12)
        0.5
    """
    axial = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                         R[..., 1, 0] - R[..., 0, 1]], -1)
    cos = (torch.diagonal(R, dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.atan2(torch.linalg.vector_norm(axial, dim=-1) / 2, cos)


def rotation_error_deg(R_est: Tensor, R_true: Tensor) -> Tensor:
    """Angle in degrees of :math:`R_{est}^\\top R_{true}` (0 when they agree).

    Args:
        R_est (Tensor): ``(..., 3, 3)`` estimated rotations.
        R_true (Tensor): ``(..., 3, 3)`` true rotations.

    Returns:
        Tensor: ``(...)`` angles in degrees.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import rotation_error_deg, so3_exp
        >>> R = so3_exp(torch.tensor([0.1, 0.0, 0.0], dtype=torch.float64))
        >>> round(float(rotation_error_deg(R, torch.eye(3, dtype=torch.float64))), 4)
        5.7296
    """
    return torch.rad2deg(rotation_angle(R_est.transpose(-1, -2) @ R_true))


def so3_exp(omega: Tensor) -> Tensor:
    r"""Rotation :math:`\exp([\omega]_\times)` of an axis-angle vector ``(..., 3)`` (differentiable).

    Args:
        omega (Tensor): ``(..., 3)`` axis times angle.

    Returns:
        Tensor: ``(..., 3, 3)`` rotation matrices.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import so3_exp
        >>> R = so3_exp(torch.tensor([0.0, 0.0, torch.pi / 2], dtype=torch.float64))   # a quarter turn about z
        >>> (R @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)).round(decimals=12) + 0.0
        tensor([0., 1., 0.], dtype=torch.float64)
    """
    zero = torch.zeros_like(omega[..., 0])
    K = torch.stack([torch.stack([zero, -omega[..., 2], omega[..., 1]], -1),
                     torch.stack([omega[..., 2], zero, -omega[..., 0]], -1),
                     torch.stack([-omega[..., 1], omega[..., 0], zero], -1)], -2)
    return torch.linalg.matrix_exp(K)


def so3_log(R: Tensor) -> Tensor:
    r"""Axis-angle vector :math:`\omega` ``(..., 3)`` with :math:`\exp([\omega]_\times) = R`, :math:`|\omega| \le \pi`.

    From the skew part, :math:`\omega = \theta\,\mathrm{axial}(R - R^\top) / (2\sin\theta)`; within
    1e-4 of :math:`\pi`, where that ratio is ill-conditioned, the axis is the column of
    :math:`(R + I)/2 = a a^\top` of largest norm, its sign taken from the skew part.

    Args:
        R (Tensor): ``(..., 3, 3)`` rotation matrices.

    Returns:
        Tensor: ``(..., 3)`` axis-angle vectors.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import so3_exp, so3_log
        >>> omega = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
        >>> torch.allclose(so3_log(so3_exp(omega)), omega)
        True
    """
    theta = rotation_angle(R)
    axial = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                         R[..., 1, 0] - R[..., 0, 1]], -1)
    sin = torch.sin(theta)
    small = theta < 1e-6
    factor = torch.where(small, 0.5 + theta * theta / 12, theta / (2 * torch.where(small, torch.ones_like(sin), sin)))
    omega = factor.unsqueeze(-1) * axial
    near_pi = (math.pi - theta) < 1e-4
    if bool(near_pi.any()):
        B = (R + torch.eye(3, dtype=R.dtype, device=R.device)) / 2
        col = torch.linalg.vector_norm(B, dim=-2).argmax(-1)
        a = torch.gather(B, -1, col[..., None, None].expand(*B.shape[:-1], 1)).squeeze(-1)
        a = a / torch.linalg.vector_norm(a, dim=-1, keepdim=True)
        sign = torch.where((a * axial).sum(-1) < 0, -1.0, 1.0).to(R.dtype)
        omega = torch.where(near_pi.unsqueeze(-1), (sign * theta).unsqueeze(-1) * a, omega)
    return omega
