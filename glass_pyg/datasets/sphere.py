r"""Pairs of point sets on :math:`S^2` with a planted correspondence and rotation."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..geometry.rotation import random_rotation
from ..geometry.sphere import exp_map, normalize
from .generated import GeneratedPairDataset
from .pair_data import PairData
from .sampling import pair_generator

_DISTRIBUTIONS = ("uniform", "vmf")


def sample_uniform(n: int, gen: torch.Generator) -> Tensor:
    """``n`` uniform points on :math:`S^2`, ``(n, 3)`` float64."""
    return normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64))


def sample_vmf_mixture(n: int, num_clusters: int, kappa: float, gen: torch.Generator) -> Tensor:
    r"""``n`` points from an equal-weight mixture of von Mises-Fisher laws on :math:`S^2`.

    Uniform means; exact sampling by inverting the CDF of :math:`w = \mu\cdot x`,
    :math:`w = 1 + \kappa^{-1}\log(u + (1-u)e^{-2\kappa})`, and a uniform angle
    around :math:`\mu`.
    """
    means = sample_uniform(num_clusters, gen)
    comp = torch.randint(0, num_clusters, (n,), generator=gen)
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    w = 1 + torch.log(u + (1 - u) * math.exp(-2 * kappa)) / kappa
    phi = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
    r = (1 - w * w).clamp_min(0).sqrt()
    local = torch.stack([r * torch.cos(phi), r * torch.sin(phi), w], 1)  # around +z
    mu = means[comp]
    # Householder reflection taking +z to mu (a reflection keeps the law: it is symmetric about the axis)
    e = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    h = e - mu
    hn = (h * h).sum(1, keepdim=True)
    flip = hn.squeeze(1) > 1e-24
    reflected = local - 2 * h * (local * h).sum(1, keepdim=True) / hn.clamp_min(1e-300)
    return normalize(torch.where(flip.unsqueeze(1), reflected, local))


def tangent_noise(x: Tensor, noise_deg: float, gen: torch.Generator) -> Tensor:
    """Move every point along a tangent Gaussian step of ``noise_deg`` degrees per axis."""
    if noise_deg == 0:
        return x
    v = torch.randn(x.shape, generator=gen, dtype=x.dtype) * math.radians(noise_deg)
    return exp_map(v, x)


def make_sphere_pair(n: int, noise_deg: float, rotation: bool, max_rotation_deg: float | None,
                     distribution: str, num_clusters: int, kappa: float, gen: torch.Generator) -> PairData:
    """One pair: points, their noisy rotated copies under a random relabelling."""
    pos = sample_uniform(n, gen) if distribution == "uniform" else sample_vmf_mixture(n, num_clusters, kappa, gen)
    perm = torch.randperm(n, generator=gen)
    R = (random_rotation(generator=gen, max_angle_deg=max_rotation_deg) if rotation
         else torch.eye(3, dtype=torch.float64))
    moved = tangent_noise(pos, noise_deg, gen) @ R.t()
    pos_t = torch.empty_like(moved)
    pos_t[perm] = moved
    return PairData(pos_s=pos.float(), pos_t=pos_t.float(), y=torch.stack([torch.arange(n), perm]),
                    rotation=R.float().unsqueeze(0), num_nodes=2 * n)


class SpherePairDataset(GeneratedPairDataset):
    r"""Pairs of point sets on :math:`S^2`: target = noisy, rotated, relabelled source.

    Source points are uniform on the sphere or drawn from a mixture of
    ``num_clusters`` von Mises-Fisher laws of concentration ``kappa``. The
    target is the source under a uniformly random permutation, moved by
    tangent Gaussian noise of ``noise_deg`` degrees and, with ``rotation``,
    rotated by a Haar rotation (conditioned on an angle <= ``max_rotation_deg``
    when given). Items are :class:`PairData` with ``pos_s``, ``pos_t``
    (float32, ``(n, 3)``), ``y = [arange(n), perm]`` (``pos_t[perm[i]]`` is
    the image of ``pos_s[i]``) and ``rotation`` ``(1, 3, 3)``, the true
    :math:`R` with ``pos_t[perm] ≈ pos_s @ R.T``. Item ``k`` is drawn from
    its own generator derived from ``(seed, k)``.

    Args:
        root (str, optional): folder for the processed file; ``None`` keeps the dataset in memory only.
        n (int): points per set. Default ``256``.
        noise_deg (float): standard deviation of the tangent noise, in degrees. Default ``2.0``.
        rotation (bool): rotate the target. Default ``False``.
        max_rotation_deg (float, optional): bound on the rotation angle. Default: none (Haar).
        distribution (str): ``"uniform"`` or ``"vmf"`` (clustered). Default ``"uniform"``.
        num_clusters (int): von Mises-Fisher components. Default ``4``.
        kappa (float): their concentration. Default ``20.0``.
        num_pairs (int): items of the dataset. Default ``1``.
        seed (int): of every item's generator. Default ``0``.
        transform, pre_transform (callable, optional): as in PyG's datasets.
        force_reload (bool): process again even when the file exists. Default ``False``.

    Raises:
        ValueError: naming the parameter out of range.

    Example:
        >>> from glass_pyg.datasets import SpherePairDataset
        >>> pair = SpherePairDataset(n=128, noise_deg=1.0, rotation=True, seed=0)[0]
        >>> tuple(pair.pos_s.shape), tuple(pair.pos_t.shape), tuple(pair.rotation.shape)
        ((128, 3), (128, 3), (1, 3, 3))
    """

    def __init__(self, root: str | None = None, n: int = 256, noise_deg: float = 2.0,
                 rotation: bool = False, max_rotation_deg: float | None = None,
                 distribution: str = "uniform", num_clusters: int = 4, kappa: float = 20.0,
                 num_pairs: int = 1, seed: int = 0, transform: Callable | None = None,
                 pre_transform: Callable | None = None, force_reload: bool = False) -> None:
        _check(n, noise_deg, max_rotation_deg, distribution, num_clusters, kappa, num_pairs, seed)
        self.n, self.noise_deg, self.rotation = n, float(noise_deg), bool(rotation)
        self.max_rotation_deg = None if max_rotation_deg is None else float(max_rotation_deg)
        self.distribution, self.num_clusters, self.kappa = distribution, num_clusters, float(kappa)
        self.num_pairs, self.seed = num_pairs, seed
        super().__init__(root, transform, pre_transform, force_reload)

    @property
    def processed_file_names(self) -> list[str]:
        """One file per parameter set (floats by ``repr``, so distinct values never share a file)."""
        rot = "none" if not self.rotation else ("haar" if self.max_rotation_deg is None
                                                else f"max{self.max_rotation_deg!r}")
        dist = "uniform" if self.distribution == "uniform" else f"vmf{self.num_clusters}k{self.kappa!r}"
        return [f"s2_n{self.n}_noise{self.noise_deg!r}_rot{rot}_{dist}_pairs{self.num_pairs}_seed{self.seed}.pt"]

    def _pairs(self) -> list[PairData]:
        return [make_sphere_pair(self.n, self.noise_deg, self.rotation, self.max_rotation_deg,
                                self.distribution, self.num_clusters, self.kappa, pair_generator(self.seed, k))
               for k in range(self.num_pairs)]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({len(self)}, n={self.n}, noise_deg={self.noise_deg:g}, "
                f"rotation={self.rotation})")


def _check(n, noise_deg, max_rotation_deg, distribution, num_clusters, kappa, num_pairs, seed) -> None:
    for name, v in (("n", n), ("num_pairs", num_pairs), ("num_clusters", num_clusters)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(noise_deg, (int, float)) or not 0 <= noise_deg <= 90:
        raise ValueError(f"noise_deg must be in [0, 90], got {noise_deg!r}")
    if max_rotation_deg is not None and not 0 < max_rotation_deg <= 180:
        raise ValueError(f"max_rotation_deg must be in (0, 180], got {max_rotation_deg!r}")
    if distribution not in _DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {_DISTRIBUTIONS}, got {distribution!r}")
    if not isinstance(kappa, (int, float)) or not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
