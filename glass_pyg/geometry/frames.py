r"""Candidate rotations between two point clouds on :math:`S^2`, and orthogonal Procrustes.

Convention everywhere: a rotation :math:`R` *takes the source to the target*,
:math:`y \approx R x`, so the target is brought back by ``pos_t @ R``.

A cloud's first moment (its mean direction) and second moment
:math:`M = \frac1n\sum_i x_i x_i^\top` turn with it: :math:`\bar y = R\bar x`,
:math:`M_y = R M_x R^\top`. Matching the two moment frames therefore gives
:math:`R` up to the frames' sign and ordering ambiguities, in :math:`O(n)`.
For a sample, both are fixed by the sample itself (the target is the same
points, moved by noise), so the frames agree to within a few degrees at any
``n``, as long as the mean is not near zero (symmetric clouds) and the
eigenvalues are not near-equal. Where they are, the other candidates (every
proper ordering and sign of the eigenframe, and the 60 rotations of the
icosahedral group, whose covering radius is below the 60-90 degree basin of
the sliced transport cost) keep the search from depending on them.
"""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor


def _unit(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


def _frame(first: Tensor, second: Tensor) -> Tensor:
    """Orthonormal right-handed frame (columns) whose first axis is ``first`` and second is in span(first, second)."""
    e1 = _unit(first)
    e2 = _unit(second - (second * e1).sum(-1, keepdim=True) * e1)
    e3 = torch.linalg.cross(e1, e2)
    return torch.stack([e1, e2, e3], -1)


def proper_signed_permutations(dtype: torch.dtype = torch.float64) -> Tensor:
    """The 24 rotations that permute the coordinate axes with signs (the octahedral group), ``(24, 3, 3)``."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            G = torch.zeros(3, 3, dtype=torch.float64)
            for i, (j, s) in enumerate(zip(perm, signs)):
                G[i, j] = s
            if torch.linalg.det(G) > 0:
                out.append(G)
    return torch.stack(out).to(dtype)


def icosahedral_rotations(dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The 60 rotations of the icosahedral group, ``(60, 3, 3)``.

    From the 120 unit quaternions of the binary icosahedral group (the
    vertices of the 600-cell), one of each pair :math:`\pm q`. Every rotation
    lies within 44.5 degrees of one of them.
    """
    phi = (1 + math.sqrt(5)) / 2
    quats = set()
    for i in range(4):
        for s in (1.0, -1.0):
            q = [0.0] * 4
            q[i] = s
            quats.add(tuple(q))
    for signs in itertools.product((0.5, -0.5), repeat=4):
        quats.add(signs)
    base = (phi / 2, 0.5, 1 / (2 * phi), 0.0)
    even = [p for p in itertools.permutations(range(4)) if _parity(p) == 0]
    for p in even:
        for signs in itertools.product((1.0, -1.0), repeat=3):
            v = [base[0] * signs[0], base[1] * signs[1], base[2] * signs[2], 0.0]
            quats.add(tuple(round(v[p[k]], 12) for k in range(4)))
    q = torch.tensor(sorted(quats), dtype=torch.float64)
    q = q[(q[:, 0] > 1e-9) | ((q[:, 0].abs() <= 1e-9) & _first_nonzero_positive(q[:, 1:]))]
    return quaternion_to_matrix(q).to(dtype)


def _parity(p: tuple[int, ...]) -> int:
    inv = sum(1 for i in range(len(p)) for j in range(i + 1, len(p)) if p[i] > p[j])
    return inv % 2


def _first_nonzero_positive(v: Tensor) -> Tensor:
    out = torch.zeros(v.size(0), dtype=torch.bool)
    for k in range(v.size(0)):
        nz = v[k][v[k].abs() > 1e-9]
        out[k] = bool(nz.numel() and nz[0] > 0)
    return out


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` of unit quaternions ``(..., 4)`` in the order (w, x, y, z)."""
    q = _unit(q)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], -2)


def moment_candidates(x: Tensor, y: Tensor) -> Tensor:
    r"""Rotations :math:`R` with :math:`y \approx R x` read off the clouds' moments, ``(30, 3, 3)``.

    The first 6 align the mean directions and one eigenvector of the second
    moment (each of the three, both signs); the other 24 align the
    eigenframes under every proper ordering and sign. ``x`` ``(n, 3)`` and
    ``y`` ``(m, 3)``; float64 inside, returned in ``x``'s dtype.
    """
    xd, yd = x.double(), y.double()
    mx, my = xd.mean(0), yd.mean(0)
    _, vx = torch.linalg.eigh(xd.t() @ xd / xd.size(0))
    _, vy = torch.linalg.eigh(yd.t() @ yd / yd.size(0))
    # eigenvector signs are arbitrary: fix them by the mean so that a sign flip of the data's eigensolver
    # does not change which candidates exist
    vx = vx * torch.where((vx * mx.unsqueeze(1)).sum(0) < 0, -1.0, 1.0)
    vy = vy * torch.where((vy * my.unsqueeze(1)).sum(0) < 0, -1.0, 1.0)
    out = []
    for k in range(3):
        for s in (1.0, -1.0):
            fx, fy = _frame(mx, vx[:, k]), _frame(my, s * vy[:, k])
            out.append(fy @ fx.t())
    ex = vx * torch.where(torch.linalg.det(vx) < 0, -1.0, 1.0)
    ey = vy * torch.where(torch.linalg.det(vy) < 0, -1.0, 1.0)
    for G in proper_signed_permutations():
        out.append(ey @ G @ ex.t())
    return torch.stack(out).to(x.dtype)


def kabsch(x: Tensor, y: Tensor, weights: Tensor | None = None) -> Tensor:
    r"""The rotation :math:`R` minimising :math:`\sum_i w_i \lVert y_i - R x_i\rVert^2`, ``(3, 3)``.

    ``x`` and ``y`` are matched rows ``(k, 3)``. SVD of the cross-covariance
    :math:`H = \sum_i w_i y_i x_i^\top = U\Sigma V^\top`,
    :math:`R = U\,\mathrm{diag}(1, 1, \det UV^\top)\,V^\top`.
    """
    if x.shape != y.shape or x.dim() != 2 or x.size(1) != 3:
        raise ValueError(f"kabsch needs matched (k, 3) rows, got {tuple(x.shape)} and {tuple(y.shape)}")
    w = torch.ones(x.size(0), dtype=x.dtype, device=x.device) if weights is None else weights
    H = (y * w.unsqueeze(1)).t() @ x
    U, _, Vh = torch.linalg.svd(H.double())
    d = torch.sign(torch.linalg.det(U @ Vh))
    d = torch.where(d == 0, torch.ones_like(d), d)
    D = torch.diag(torch.stack([torch.ones_like(d), torch.ones_like(d), d]))
    return (U @ D @ Vh).to(x.dtype)
