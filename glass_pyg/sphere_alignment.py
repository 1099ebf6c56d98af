r"""Rotation-invariant matching of two point clouds on :math:`S^2`.

:func:`align_sphere` recovers the rotation :math:`R` with
``pos_t[perm] ≈ pos_s @ R.T`` and the matching, in three stages:

1. **Start.** Candidate rotations read off the clouds' moments (mean
   direction and second-moment eigenframe, every sign and ordering) and the 60
   rotations of the icosahedral group, ranked by the sliced 1-D transport cost
   on a few fixed directions (:mod:`glass_pyg.geometry.frames`).
2. **Descent.** The best candidates are descended by gradient on the sliced
   transport cost :math:`S(R)`, GLASS's 1-D transport with linear slices
   (:func:`~glass_pyg.geometry.sliced.descend_rotation`), whose basin is
   60-90 degrees wide at every ``n``; the lowest final cost wins. Its
   minimiser lies within a few tenths of a degree of the truth.
3. **Polish.** Rounds of exact assignment on the squared geodesic cost and
   orthogonal Procrustes (Kabsch) on the matched pairs, which converge from
   within about one point spacing; the last assignment is the matching.

The lifted GLASS loss :math:`\langle P, d^2\rangle` alone pulls a rotation in
only from about one point spacing, so stages 1-2 are what make GLASS work on
rotated pairs; a GLASS head trained on the aligned pair then matches as
exact assignment does.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import losses, metrics
from .assignment import sparse_assignment
from .geometry.frames import icosahedral_rotations, kabsch, moment_candidates
from .geometry.rotation import rotation_angle
from .geometry.sliced import SlicedCost, descend_rotation, fibonacci_directions
from .geometry.sphere import geodesic_distance

__all__ = ["SphereAlignment", "align_sphere", "match_points", "polish_rotation", "start_rotations",
           "check_sphere_points"]

_DENSE_LIMIT = metrics._DENSE_LIMIT


@dataclass(frozen=True)
class SphereAlignment:
    """The result of :func:`align_sphere` (float64 rotation, on the inputs' device).

    Example:
        >>> from glass_pyg import align_sphere
        >>> from glass_pyg.datasets import SpherePairDataset
        >>> pair = SpherePairDataset(n=256, noise_deg=1.0, rotation=True, seed=0)[0]
        >>> res = align_sphere(pair.pos_s, pair.pos_t)
        >>> tuple(res.rotation.shape), tuple(res.perm.shape), res.candidates > 0
        ((3, 3), (256,), True)
    """

    rotation: Tensor  #: ``(3, 3)``, ``pos_t[perm] ≈ pos_s @ rotation.T``
    perm: Tensor | None  #: ``(n,)`` target index of every source point (``-1``: unmatched), or None
    sliced_cost: float  #: the sliced 1-D transport cost at the descended rotation
    start_rotation: Tensor  #: ``(3, 3)`` the chosen start, before descent
    candidates: int  #: start rotations scored
    seconds: float  #: wall time

    def aligned_target(self, pos_t: Tensor) -> Tensor:
        """``pos_t`` rotated back onto the source, ``pos_t @ R``."""
        return pos_t @ self.rotation.to(pos_t.dtype)


def check_sphere_points(x: Tensor, name: str, *, min_points: int = 1, atol: float = 1e-3) -> Tensor:
    """``x`` as float64 unit vectors ``(n, 3)``, or an error naming what is wrong.

    Rows within ``atol`` of unit norm (float32 round-off) are normalised; rows
    further off the sphere are refused, not silently projected.

    Args:
        x (Tensor): ``(n, 3)`` points.
        name (str): the argument's name, for the error.
        min_points (int): fewest rows accepted. Default ``1``.
        atol (float): tolerance on the norm. Default ``1e-3``.

    Returns:
        Tensor: ``(n, 3)`` float64 unit vectors.

    Raises:
        TypeError: ``x`` is not a floating-point tensor (the message names ``name``).
        ValueError: a wrong shape, too few points, or rows off the sphere or not finite (naming the row).

    Example:
        >>> import torch
        >>> from glass_pyg.sphere_alignment import check_sphere_points
        >>> check_sphere_points(torch.tensor([[0.0, 0.0, 1.0]]), "pos_s").dtype
        torch.float64
        >>> check_sphere_points(torch.tensor([[0.0, 0.0, 2.0]]), "pos_s")
        Traceback (most recent call last):
            ...
        ValueError: pos_s ...
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape (n, 3), got {type(x).__name__}")
    if x.dim() != 2 or x.size(1) != 3:
        raise ValueError(f"{name} must have shape (n, 3), got {tuple(x.shape)}")
    if x.size(0) < min_points:
        raise ValueError(f"{name} needs at least {min_points} points, got {x.size(0)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    x = x.detach().double()
    bad = ~torch.isfinite(x).all(1)
    if bool(bad.any()):
        raise ValueError(f"{name} holds non-finite values (row {int(bad.nonzero()[0])})")
    norm = x.norm(dim=1)
    off = (norm - 1).abs() > atol
    if bool(off.any()):
        i = int(off.nonzero()[0])
        raise ValueError(f"{name} must be unit vectors on S^2: row {i} has norm {float(norm[i]):.6g} "
                         f"({int(off.sum())} rows off by more than {atol:g}); normalise them first")
    return x / norm.unsqueeze(1)


def start_rotations(pos_s: Tensor, pos_t: Tensor, *, directions: int = 4) -> tuple[Tensor, Tensor]:
    r"""Candidate rotations, ranked by their sliced transport cost, best first.

    Returns ``(R, cost)``: ``(C, 3, 3)`` and ``(C,)`` with ``C = 90`` (30
    moment frames and the 60 icosahedral rotations).

    Args:
        pos_s (Tensor): ``(n, 3)`` source unit vectors.
        pos_t (Tensor): ``(m, 3)`` target unit vectors.
        directions (int): slice directions of the sliced cost that ranks them. Default ``4``.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize
        >>> from glass_pyg.sphere_alignment import start_rotations
        >>> x = normalize(torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        >>> R, cost = start_rotations(x, x)
        >>> tuple(R.shape), bool((cost[1:] >= cost[:-1]).all())
        ((90, 3, 3), True)
    """
    x, y = check_sphere_points(pos_s, "pos_s", min_points=3), check_sphere_points(pos_t, "pos_t", min_points=3)
    C = torch.cat([moment_candidates(x, y), icosahedral_rotations()])
    with torch.no_grad():
        cost = SlicedCost(x, y)(C, fibonacci_directions(directions))
    order = cost.argsort()
    return C[order], cost[order]


def _distinct(R: Tensor, k: int, min_deg: float) -> Tensor:
    """The first ``k`` rows of ``R`` that lie at least ``min_deg`` apart (in order)."""
    keep = [0]
    for i in range(1, R.size(0)):
        if len(keep) == k:
            break
        ang = torch.rad2deg(rotation_angle(R[keep].transpose(-1, -2) @ R[i]))
        if bool((ang >= min_deg).all()):
            keep.append(i)
    return R[keep]


def match_points(pos_s: Tensor, pos_t: Tensor, *, candidates: int = 8, retry: bool = True) -> Tensor:
    r"""Minimum squared-geodesic-cost matching of two aligned point sets, ``(n,)``.

    Exact (dense assignment) while ``n * m <= 2**22``. Beyond, exact on the
    candidate pairs ``(i, j)`` where ``j`` is among the ``candidates``
    nearest targets of ``i`` or ``i`` among the nearest sources of ``j``
    (k-d trees, :func:`~glass_pyg.assignment.sparse_assignment`): the
    assignment itself whenever no optimal pair is farther apart than that
    (at ``n = 4096``, 8 and 16 candidates gave the dense optimum's accuracy).
    When those candidates admit no full matching (dense vMF clusters at
    ``n = 16384``: 3-21 points), twice as many are tried (with ``retry``), and a
    :class:`~glass_pyg.metrics.DecodingWarning` says how many pairs remain
    outside them.

    Args:
        pos_s (Tensor): ``(n, 3)`` source unit vectors.
        pos_t (Tensor): ``(m, 3)`` target unit vectors, aligned with the source.
        candidates (int): nearest neighbours per point beyond the dense limit. Default ``8``.
        retry (bool): try twice as many candidates when they admit no full matching. Default ``True``.

    Returns:
        Tensor: ``(n,)`` int64 target per source.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize
        >>> from glass_pyg.sphere_alignment import match_points
        >>> x = normalize(torch.randn(100, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        >>> perm = torch.randperm(100, generator=torch.Generator().manual_seed(1))
        >>> inv = torch.empty_like(perm); inv[perm] = torch.arange(100)
        >>> torch.equal(match_points(x, x[perm]), inv)                       # source i sits at target inv[i]
        True
    """
    x, y = check_sphere_points(pos_s, "pos_s"), check_sphere_points(pos_t, "pos_t")
    n, m = x.size(0), y.size(0)
    if n * m <= _DENSE_LIMIT:
        plan = torch.ones(n, m, dtype=torch.float64)
        return metrics.to_permutation(plan, losses.squared_geodesic(x, y), assignment="optimal")
    from scipy.spatial import cKDTree
    xn, yn = x.numpy(), y.numpy()
    tree_t, tree_s = cKDTree(yn), cKDTree(xn)
    for k in (candidates, 2 * candidates) if retry else (candidates,):  # dense clusters can leave too few
        k_t, k_s = min(k, m), min(k, n)
        _, to_t = tree_t.query(xn, k=k_t)
        _, to_s = tree_s.query(yn, k=k_s)
        rows = np.concatenate([np.repeat(np.arange(n), k_t), to_s.reshape(-1)])
        cols = np.concatenate([to_t.reshape(-1), np.repeat(np.arange(m), k_s)])
        cost = (geodesic_distance(x[rows], y[cols]) ** 2).numpy()
        match, outside = sparse_assignment(rows, cols, cost, n, m)
        if not outside:
            break
    if outside:
        warnings.warn(f"{outside} of {min(n, m)} pairs were matched outside the {k} nearest "
                      f"candidates; raise candidates", metrics.DecodingWarning, stacklevel=2)
    return torch.as_tensor(match, dtype=torch.long)


def polish_rotation(pos_s: Tensor, pos_t: Tensor, R: Tensor, *, rounds: int = 3,
                    candidates: int = 8, match: bool = True) -> tuple[Tensor, Tensor | None]:
    r"""Rounds of (assignment of the aligned sets, Kabsch on the matched pairs), then a last assignment.

    Converges from within about one point spacing of the truth. Returns
    ``(R, perm)``; stops early when the matching repeats. Without ``match``
    the last assignment (of the final rotation) is not made and ``perm`` is
    None: beyond the dense limit each assignment is a sparse solve, the
    longest part of the polish.

    Args:
        pos_s (Tensor): ``(n, 3)`` source unit vectors.
        pos_t (Tensor): ``(m, 3)`` target unit vectors.
        R (Tensor): ``(3, 3)`` starting rotation, ``pos_t ≈ pos_s @ R.T``.
        rounds (int): most assignment-Kabsch rounds. Default ``3``.
        candidates (int): as in :func:`match_points`. Default ``8``.
        match (bool): also return the matching of the final rotation. Default ``True``.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import normalize, random_rotation, rotation_error_deg
        >>> from glass_pyg.sphere_alignment import polish_rotation
        >>> x = normalize(torch.randn(500, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))
        >>> R_true = random_rotation(generator=torch.Generator().manual_seed(1))
        >>> start = random_rotation(generator=torch.Generator().manual_seed(2), max_angle_deg=2.0) @ R_true
        >>> R, perm = polish_rotation(x, x @ R_true.T, start)
        >>> float(rotation_error_deg(R, R_true)) < 1e-6
        True
    """
    x, y = check_sphere_points(pos_s, "pos_s"), check_sphere_points(pos_t, "pos_t")
    R = R.double()
    # the rounds' matchings only feed Kabsch: a few escape pairs there cost nothing, so no retry
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", metrics.DecodingWarning)
        perm = match_points(x, y @ R, candidates=candidates, retry=False)
        for _ in range(rounds):
            ok = perm >= 0
            R = kabsch(x[ok], y[perm[ok]])
            new = match_points(x, y @ R, candidates=candidates, retry=False)
            if torch.equal(new, perm):
                break
            perm = new
    if not match:
        return R, None
    if x.size(0) * y.size(0) <= _DENSE_LIMIT:
        return R, perm  # the matching of the final R, exact
    return R, match_points(x, y @ R, candidates=candidates)


def align_sphere(pos_s: Tensor, pos_t: Tensor, *, top: int = 3, steps: int = 100, screen_steps: int = 25,
                 directions: int = 2,
                 lr: float = 0.02, engine: str = "sort", gamma: float = 1.0, polish_rounds: int = 3,
                 match: bool = True, seed: int = 0) -> SphereAlignment:
    r"""Recover the rotation between two point clouds on :math:`S^2`, and the matching.

    Args:
        pos_s: source points ``(n, 3)`` on the sphere (float32 or float64).
        pos_t: target points ``(m, 3)``: a rotated, relabelled, noisy copy;
            ``n != m`` is allowed. On a uniform cloud the rotation is read off
            the sample's own fluctuations, so most points need a partner
            (about 90%); clustered clouds (vMF mixtures) tolerate more.
        top (int): best start candidates descended (at least 20 degrees apart).
        steps (int): descent steps of the best of them.
        screen_steps (int): descent steps of every one of the ``top`` starts,
            after which the lowest sliced cost goes on (each step costs one
            sort per direction and start, so at ``n = 10^5`` screening halves
            the time of descending all of them fully).
        directions (int): random slice directions per descent step (a
            stochastic gradient of the full sliced cost: its minimiser is
            nearer the truth than that of a fixed set of directions).
        lr (float): initial descent step in radians (cosine-decayed).
        engine (str): ``"sort"`` (exact 1-D transport) or ``"sinkhorn"``
            (entropic, :func:`~glass_pyg.ot.sinkhorn_banded` at a rank
            temperature ``gamma``).
        polish_rounds (int): assignment + Kabsch rounds (0: none).
        match (bool): also return the matching (``perm``); with
            ``polish_rounds = 0`` it is computed once on the descended rotation.
        seed (int): seeds the random directions.

    Returns:
        :class:`SphereAlignment`.

    Example:
        >>> from glass_pyg import align_sphere
        >>> from glass_pyg.datasets import SpherePairDataset
        >>> pair = SpherePairDataset(n=256, rotation=True, seed=0)[0]
        >>> res = align_sphere(pair.pos_s, pair.pos_t)
        >>> res.rotation.shape
        torch.Size([3, 3])
    """
    counts = (("top", top), ("steps", steps), ("screen_steps", screen_steps), ("directions", directions),
              ("polish_rounds", polish_rounds))
    for name, v in counts:
        least = 1 if name in ("top", "directions") else 0
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    t0 = time.perf_counter()
    device = pos_s.device if isinstance(pos_s, Tensor) else None
    x = check_sphere_points(pos_s, "pos_s", min_points=3).cpu()
    y = check_sphere_points(pos_t, "pos_t", min_points=3).cpu()
    starts, _ = start_rotations(x, y, directions=3)
    chosen = _distinct(starts, top, 20.0)
    gen = torch.Generator().manual_seed(seed)
    opts = dict(directions=directions, lr=lr, engine=engine, gamma=gamma, generator=gen)
    if chosen.size(0) > 1 and screen_steps:
        screened, cost = descend_rotation(x, y, chosen, steps=screen_steps, **opts)
        best = int(cost.argmin())
        chosen, start = screened[best:best + 1], chosen[best]
    else:
        start = None
    R, cost = descend_rotation(x, y, chosen, steps=steps, **opts)
    best = int(cost.argmin())
    start = chosen[best] if start is None else start
    R_best = R[best]
    perm = None
    if polish_rounds:
        R_best, perm = polish_rotation(x, y, R_best, rounds=polish_rounds, match=match)
    elif match:
        perm = match_points(x, y @ R_best)
    return SphereAlignment(rotation=R_best.to(device), perm=None if not match else perm.to(device),
                           sliced_cost=float(cost[best]), start_rotation=start.to(device),
                           candidates=starts.size(0), seconds=time.perf_counter() - t0)
