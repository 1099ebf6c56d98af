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
    where :math:`\det Q = -1`. With ``max_angle_deg`` the rotation is Haar
    conditioned on an angle at most that bound (rejection sampling; the angle
    density is :math:`(1 - \cos\theta)/\pi`). Sampled in float64 on the CPU
    from ``generator``, then cast.
    """
    if max_angle_deg is not None and not 0 < max_angle_deg <= 180:
        raise ValueError(f"max_angle_deg must be in (0, 180], got {max_angle_deg!r}")
    count = 1 if num is None else num
    if count < 0:
        raise ValueError(f"num must be >= 0, got {num}")
    out = torch.zeros(0, 3, 3, dtype=torch.float64)
    while out.size(0) < count:
        need = count - out.size(0)
        draw = need if max_angle_deg is None else max(8, int(need * 2.5 / _acceptance(max_angle_deg)))
        g = torch.randn(draw, 3, 3, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
        flip = torch.linalg.det(q) < 0
        q[flip, :, 0] = -q[flip, :, 0]
        if max_angle_deg is not None:
            q = q[rotation_angle(q) <= math.radians(max_angle_deg)]
        out = torch.cat([out, q[:need]])
    out = out.to(dtype=dtype, device=device)
    return out[0] if num is None else out


def _acceptance(max_angle_deg: float) -> float:
    t = math.radians(max_angle_deg)
    return (t - math.sin(t)) / math.pi


def rotation_angle(R: Tensor) -> Tensor:
    r"""Rotation angle in radians, :math:`\theta = \operatorname{atan2}(\lVert\mathrm{axial}(R - R^\top)\rVert/2, (\operatorname{tr}R - 1)/2)`."""
    axial = torch.stack([R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0],
                         R[..., 1, 0] - R[..., 0, 1]], -1)
    cos = (torch.diagonal(R, dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.atan2(torch.linalg.vector_norm(axial, dim=-1) / 2, cos)


def rotation_error_deg(R_est: Tensor, R_true: Tensor) -> Tensor:
    """Angle in degrees of :math:`R_{est}^\\top R_{true}` (0 when they agree)."""
    return torch.rad2deg(rotation_angle(R_est.transpose(-1, -2) @ R_true))


def so3_exp(omega: Tensor) -> Tensor:
    r"""Rotation :math:`\exp([\omega]_\times)` of an axis-angle vector ``(..., 3)`` (differentiable)."""
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
