r"""Stochastic-block-model graph pairs with a planted correspondence."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch_geometric.utils import coalesce

from .generated import GeneratedPairDataset
from .pair_data import PairData
from .sampling import distinct_pairs, pair_generator


def sbm_edges(sizes: list[int], p_in: float, p_out: float, gen: torch.Generator) -> Tensor:
    r"""Undirected SBM edges ``(E, 2)`` with ``i < j``: within-block pairs with
    probability ``p_in``, across blocks ``p_out``, each block pair drawn as a
    binomial count of distinct pairs."""
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    parts = []
    for a, na in enumerate(sizes):
        for b in range(a, len(sizes)):
            nb = sizes[b]
            total = na * (na - 1) // 2 if a == b else na * nb
            p = p_in if a == b else p_out
            if total == 0 or p == 0:
                continue
            k = int(torch.binomial(torch.tensor(float(total)), torch.tensor(float(p)), generator=gen))
            pairs = distinct_pairs(k, na, None if a == b else nb, gen)
            parts.append(torch.stack([pairs[:, 0] + offsets[a], pairs[:, 1] + offsets[b]], 1))
    if not parts:
        return torch.zeros(0, 2, dtype=torch.long)
    return torch.cat(parts)


def rewire(edges: Tensor, n: int, count: int, gen: torch.Generator) -> Tensor:
    r"""Remove ``count`` uniformly chosen edges and add ``count`` uniformly chosen
    non-edges of the original graph. ``edges`` is ``(E, 2)`` with ``i < j``."""
    if count == 0:
        return edges
    keys = torch.sort(edges[:, 0] * n + edges[:, 1]).values
    keep = torch.ones(edges.size(0), dtype=torch.bool)
    keep[torch.randperm(edges.size(0), generator=gen)[:count]] = False
    try:
        added = distinct_pairs(count, n, None, gen, forbidden=keys)
    except ValueError as exc:  # fewer non-edges than edges to move
        raise ValueError(f"rewiring moves {count} of {keys.numel()} edges (n={n}): {exc}; lower rewire_prob "
                         "or the block densities") from None
    return torch.cat([edges[keep], added])


def _both_directions(edges: Tensor, n: int) -> Tensor:
    ei = torch.cat([edges.t(), edges.t().flip(0)], 1)
    return coalesce(ei, num_nodes=n)


def make_sbm_pair(n: int, blocks: int, p_in: float, p_out: float, rewire_prob: float,
                  planted_perm: bool, gen: torch.Generator) -> PairData:
    """One SBM pair: the source graph and its relabelled, rewired copy."""
    sizes = [n // blocks + (1 if i < n % blocks else 0) for i in range(blocks)]
    block = torch.repeat_interleave(torch.arange(blocks), torch.tensor(sizes))
    edges = sbm_edges(sizes, p_in, p_out, gen)
    perm = torch.randperm(n, generator=gen) if planted_perm else torch.arange(n)
    count = int(round(rewire_prob * edges.size(0)))
    noisy = rewire(edges, n, count, gen)
    mapped = perm[noisy]
    mapped = torch.stack([mapped.min(1).values, mapped.max(1).values], 1)
    block_t = torch.empty_like(block)
    block_t[perm] = block
    return PairData(x_s=torch.ones(n, 1), edge_index_s=_both_directions(edges, n),
                    x_t=torch.ones(n, 1), edge_index_t=_both_directions(mapped, n),
                    y=torch.stack([torch.arange(n), perm]), block_s=block, block_t=block_t,
                    num_rewired=torch.tensor([count]), num_nodes=2 * n)


class SBMPairDataset(GeneratedPairDataset):
    r"""Pairs of stochastic-block-model graphs with a planted permutation.

    The source is an SBM graph on ``n`` nodes in ``blocks`` blocks of equal
    size (within-block edge probability ``p_in``, across ``p_out``). The
    target is the source relabelled by a uniformly random permutation
    (identity when ``planted_perm`` is false) with exactly
    ``round(rewire_prob * |E|)`` edges removed and as many non-edges added.
    Each item is a :class:`PairData` with ``x_s``/``x_t`` (a constant feature:
    the graphs are featureless), ``edge_index_s``/``edge_index_t`` (both
    directions), ground truth ``y = [arange(n), perm]``, block labels
    ``block_s``/``block_t`` and ``num_rewired``. Item ``k`` is drawn from its
    own generator derived from ``(seed, k)``: deterministic, independent of
    the global RNG and of ``num_pairs``.

    Args:
        root (str, optional): folder for the processed file (its name holds
            every parameter); ``None`` keeps the dataset in memory only.
        n (int): nodes per graph. Default ``400``.
        blocks (int): communities of equal size. Default ``3``.
        p_in (float): edge probability inside a block. Default ``0.15``.
        p_out (float): edge probability between blocks. Default ``0.02``.
        rewire_prob (float): fraction of the target's edges moved to non-edges. Default ``0.0``.
        planted_perm (bool): relabel the target by a random permutation. Default ``True``.
        num_pairs (int): items of the dataset. Default ``1``.
        seed (int): of every item's generator. Default ``0``.
        transform, pre_transform (callable, optional): as in PyG's datasets.
        force_reload (bool): process again even when the file exists. Default ``False``.

    Raises:
        ValueError: naming the parameter out of range.

    Example:
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> ds = SBMPairDataset(root=None, n=100, blocks=2, p_in=0.2, p_out=0.02, rewire_prob=0.05,
        ...                     num_pairs=2, seed=0)
        >>> len(ds), ds[0].x_s.shape[0], tuple(ds[0].y.shape)                # root=None: in memory, no folder
        (2, 100, (2, 100))
    """

    def __init__(self, root: str | None = None, n: int = 400, blocks: int = 3, p_in: float = 0.15,
                 p_out: float = 0.02, rewire_prob: float = 0.0, planted_perm: bool = True,
                 num_pairs: int = 1, seed: int = 0, transform: Callable | None = None,
                 pre_transform: Callable | None = None, force_reload: bool = False) -> None:
        _check(n=n, blocks=blocks, p_in=p_in, p_out=p_out, rewire_prob=rewire_prob,
               num_pairs=num_pairs, seed=seed)
        self.n, self.blocks, self.p_in, self.p_out = n, blocks, float(p_in), float(p_out)
        self.rewire_prob, self.planted_perm = float(rewire_prob), bool(planted_perm)
        self.num_pairs, self.seed = num_pairs, seed
        super().__init__(root, transform, pre_transform, force_reload)

    @property
    def processed_file_names(self) -> list[str]:
        """One file per parameter set (floats by ``repr``, so distinct values never share a file)."""
        return [f"sbm_n{self.n}_b{self.blocks}_pin{self.p_in!r}_pout{self.p_out!r}_rw{self.rewire_prob!r}"
                f"_perm{int(self.planted_perm)}_pairs{self.num_pairs}_seed{self.seed}.pt"]

    def _pairs(self) -> list[PairData]:
        return [make_sbm_pair(self.n, self.blocks, self.p_in, self.p_out, self.rewire_prob,
                             self.planted_perm, pair_generator(self.seed, k)) for k in range(self.num_pairs)]

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({len(self)}, n={self.n}, blocks={self.blocks}, "
                f"p_in={self.p_in:g}, p_out={self.p_out:g}, rewire_prob={self.rewire_prob:g})")


def _check(n, blocks, p_in, p_out, rewire_prob, num_pairs, seed) -> None:
    for name, v in (("n", n), ("blocks", blocks), ("num_pairs", num_pairs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if blocks > n:
        raise ValueError(f"blocks ({blocks}) must not exceed n ({n})")
    for name, v in (("p_in", p_in), ("p_out", p_out), ("rewire_prob", rewire_prob)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
