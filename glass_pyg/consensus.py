r"""Graph matching by quadratic consensus: sparse-aware entropic Gromov-Wasserstein, then refinement.

For adjacency matrices :math:`A` (``n x n``) and :math:`B` (``m x m``) and
uniform weights :math:`p = \mathbf 1/n`, :math:`q = \mathbf 1/m`, the square-loss
Gromov-Wasserstein objective :math:`\sum_{ijkl}(A_{ik} - B_{jl})^2 T_{ij}T_{kl}`
has the linearised cost

.. math::
    C(T) = (A\circ A)\,p\,\mathbf 1^\top + \mathbf 1\,q^\top (B\circ B)^\top - 2\,A\,T\,B^\top,

and each outer step replaces :math:`T` by the entropic plan of :math:`C(T)`
(Peyré, Cuturi and Solomon 2016). From the uniform plan the first step is a
soft sort of degrees; later ones count the edges a pair would close, softly,
which is the quadratic agreement that survives heavy rewiring where local
features do not (at 20% rewiring a GLASS plan of diffusion features put its
mass on wrong pairs and GW started from it stayed at 0.8%).

Built for sparse graphs: :math:`A` and :math:`B` stay sparse, so a step is two
sparse-dense products, :math:`O((|E_s| + |E_t|)\,m)`, and an inexact
Sinkhorn of ``inner_iter`` sweeps warm-started from the previous potentials
(scaling form, with the potentials absorbed once per step). POT's solver forms
the dense products, :math:`O(n^3)`.

After every step the rows' argmax is checked for a one-to-one matching (the
plan has localised) and, every ``check_every`` steps, scored by the edges it
preserves (the quadratic assignment objective, needing no labels); a descent
stops once it has localised or that score has stalled for ``patience`` checks.
Its plan is then decoded and refined by neighbourhood votes
(:func:`~glass_pyg.refinement.refine_matching`). A descent that did not
localise is followed by descents from perturbed uniform plans; the refined
matching that preserves the most edges is the answer.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from . import metrics
from ._limits import DENSE_PAIRS
from .refinement import _adjacency as refinement_adjacency
from .refinement import refine_matching

__all__ = ["ConsensusMatching", "gw_consensus", "preserved_edges", "default_epsilons"]

_DENSE_PRODUCTS = DENSE_PAIRS  # n * m up to which the adjacencies are multiplied as dense matrices
_ROW_TOL = 1e-3  # relative row-marginal error a localised descent's plan is given ...
_SETTLE_STEPS = 3  # ... in at most this many further steps
SPLIT_ABOVE = 1 << 24  # plan entries (n = m = 4096; 64 MiB in float32) beyond which the graphs are split


@dataclass(frozen=True)
class ConsensusMatching:
    """The result of :func:`gw_consensus`.

    Example:
        >>> from glass_pyg.consensus import ConsensusMatching, gw_consensus
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(root=None, n=200, rewire_prob=0.1, seed=0)[0]
        >>> res = gw_consensus(pair.edge_index_s, pair.edge_index_t, (200, 200))
        >>> isinstance(res, ConsensusMatching), res.localised, tuple(res.plan.shape)
        (True, True, (200, 200))
    """

    perm: Tensor  #: ``(n,)`` target of every source node (``-1``: unmatched)
    plan: Tensor  #: ``(n, m)`` the entropic GW plan of the best descent (dense)
    iterations: int  #: outer GW steps run, all descents together
    preserved: float  #: fraction of the source's edges that ``perm`` maps onto target edges
    history: tuple[float, ...]  #: ``preserved`` of every descent's refined matching
    marginal_error: float  #: largest relative row-sum error of ``plan`` (its columns are exact)
    seconds: float
    localised: bool = False  #: the best descent's plan localised (row maxima one-to-one on 99% of the rows)
    parts: tuple[int, int] = (1, 1)  #: communities each graph was split into (``(1, 1)``: none)


def _adjacency(edge_index: Tensor, n: int, name: str, dtype: torch.dtype) -> Tensor:
    """Sparse ``(n, n)`` 0/1 symmetric adjacency without self-loops (checked as the refinement checks it)."""
    a = refinement_adjacency(edge_index, n, name).tocoo()
    idx = torch.from_numpy(np.vstack([a.row, a.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.ones(a.nnz, dtype=dtype), (n, n),
                                   check_invariants=False).coalesce()


def _product(M: Tensor, X: Tensor) -> Tensor:
    return torch.sparse.mm(M, X) if M.is_sparse else M @ X


def _constant(A: Tensor, B: Tensor, dtype: torch.dtype) -> Tensor:
    r""":math:`(A\circ A)p\mathbf 1^\top + \mathbf 1 q^\top(B\circ B)`: scaled degrees, for 0/1 adjacencies."""
    def degrees(M: Tensor) -> Tensor:
        return (torch.sparse.sum(M, 1).to_dense() if M.is_sparse else M.sum(1)).to(dtype) / M.size(0)
    return degrees(A).unsqueeze(1) + degrees(B).unsqueeze(0)


def linear_cost(A: Tensor, B: Tensor, T: Tensor, const: Tensor | None = None) -> Tensor:
    r"""The linearised square-loss GW cost :math:`C(T)` of 0/1 symmetric adjacencies (sparse or dense), ``(n, m)``.

    ``const`` is its constant part (the scaled degrees), when known.
    """
    const = _constant(A, B, T.dtype) if const is None else const
    # A T B^T = A (B T^T)^T with B symmetric; both products read contiguous dense operands
    TB = _product(B, T.t().contiguous()).t().contiguous()
    return const - 2.0 * _product(A, TB)


def _undirected(edge_index: Tensor) -> Tensor:
    """Each undirected edge once, as ``(i, k)`` with ``i < k``, whatever the list's directions."""
    ei = edge_index.detach().cpu().long()
    lo, hi = ei.min(0).values, ei.max(0).values
    span = int(hi.max()) + 1 if hi.numel() else 1
    keys = torch.unique((lo * span + hi)[lo < hi])
    return torch.stack([keys // span, keys % span])


def _edge_keys(edge_index: Tensor, m: int) -> Tensor:
    """Sorted keys ``j * m + l`` of the target's edges, both directions."""
    t = edge_index.detach().cpu().long()
    return torch.unique(torch.cat([t[0] * m + t[1], t[1] * m + t[0]]))


def _preserved(perm: Tensor, source: Tensor, target_keys: Tensor, m: int) -> float:
    if source.size(1) == 0 or target_keys.numel() == 0:
        return 0.0
    perm = perm.cpu()
    a, b = perm[source[0]], perm[source[1]]
    q = (a * m + b)[(a >= 0) & (b >= 0)]
    pos = torch.searchsorted(target_keys, q).clamp_max(target_keys.numel() - 1)
    return int((target_keys[pos] == q).sum()) / source.size(1)


def preserved_edges(perm: Tensor, edge_index_s: Tensor, edge_index_t: Tensor, num_nodes_t: int) -> float:
    r"""Fraction of the source's (undirected) edges :math:`\{i, k\}` with :math:`\{\pi(i), \pi(k)\}` a target edge.

    Args:
        perm (Tensor): ``(n,)`` target of every source node (``-1``: unmatched).
        edge_index_s (Tensor): ``(2, E_s)`` source edges.
        edge_index_t (Tensor): ``(2, E_t)`` target edges.
        num_nodes_t (int): target nodes.

    Returns:
        float: in ``[0, 1]`` (0 for a source without edges).

    Example:
        >>> import torch
        >>> from glass_pyg.consensus import preserved_edges
        >>> path = torch.tensor([[0, 1], [1, 2]])                              # 0-1-2
        >>> same, swapped = torch.tensor([0, 1, 2]), torch.tensor([1, 0, 2])
        >>> preserved_edges(same, path, path, 3), preserved_edges(swapped, path, path, 3)
        (1.0, 0.5)
    """
    return _preserved(perm, _undirected(edge_index_s), _edge_keys(edge_index_t, num_nodes_t), num_nodes_t)


def default_epsilons(density_s: float, density_t: float, n: int, m: int) -> tuple[float, ...]:
    r"""The entropic regularisations :func:`gw_consensus` tries, in order, by default.

    :math:`\varepsilon_0 = \tfrac18\,\delta_s\delta_t` (:math:`\delta` the edge
    densities: the scale of the cost's edge-count term) localises the SBM and
    sparse benchmark pairs of average degree up to ~60 at 10-30% rewiring, where
    smaller values stall. Denser graphs need a colder plan, about
    :math:`500 / (n m)`, which in turn fails on some sparser pairs where
    :math:`\varepsilon_0` localises (benchmarks/RESULTS.md, design measurements). So where
    :math:`500 / ((n-1)(m-1))` is below :math:`\varepsilon_0 / 2`, both
    are tried, the colder first; descents cycle through the tuple.

    Args:
        density_s (float): edge density of the source, :math:`2|E_s| / (n(n-1))`.
        density_t (float): edge density of the target.
        n (int): source nodes.
        m (int): target nodes.

    Returns:
        tuple of float: one or two values, the one to try first first.

    Example:
        >>> from glass_pyg.consensus import default_epsilons
        >>> eps = default_epsilons(0.06, 0.06, 1000, 1000)
        >>> eps[0] == 0.06 * 0.06 / 8
        True
    """
    base = 0.125 * density_s * density_t
    cold = 500.0 / max((n - 1) * (m - 1), 1)
    return (cold, base) if cold < 0.5 * base else (base,)


def _gw_descent(A: Tensor, B: Tensor, const: Tensor, T: Tensor, eps: float, max_iter: int, inner_iter: int,
                check_every: int, patience: int, source: Tensor, target_keys: Tensor) -> tuple[Tensor, int, bool]:
    """Entropic GW steps from the plan ``T``; returns ``(plan, steps, settled)``.

    The descent stops once the rows' argmax is one-to-one on 99% of the rows (the
    plan has localised: ``settled``; checked after every step, an argmax costs far
    less than a step), or once the edges that argmax preserves, scored every
    ``check_every`` steps, have not grown for ``patience`` checks.
    """
    n, m = T.shape
    dtype = T.dtype
    log_a, log_b = -math.log(n), -math.log(m)
    f = torch.zeros(n, dtype=dtype)
    g = torch.zeros(m, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    best, stale, it, localised, since = -1.0, 0, 0, False, None
    for it in range(1, max_iter + 1):
        C = linear_cost(A, B, T, const)
        # log-domain sweeps (all of them on the first step, from f = g = 0; one pair later, which makes the
        # warm plan nearly feasible), then scaling sweeps on that plan, absorbed into (f, g)
        for _ in range(inner_iter if it == 1 else 1):
            f = -eps * torch.logsumexp((g.unsqueeze(0) - C) / eps + log_b, 1)
            g = -eps * torch.logsumexp((f.unsqueeze(1) - C) / eps + log_a, 0)
        K = torch.exp((f.unsqueeze(1) + g.unsqueeze(0) - C) / eps + (log_a + log_b))
        if it > 1 and inner_iter > 1:
            u = torch.ones(n, dtype=dtype)
            v = torch.ones(m, dtype=dtype)
            for _ in range(inner_iter - 1):
                u = (1.0 / n) / (K @ v).clamp_min(tiny)
                v = (1.0 / m) / (K.t() @ u).clamp_min(tiny)
            f, g = f + eps * torch.log(u), g + eps * torch.log(v)
            K = u.unsqueeze(1) * K * v.unsqueeze(0)
        T = K
        if not bool(torch.isfinite(T).all()):
            raise FloatingPointError(f"the GW plan became non-finite at step {it} (epsilon={eps:g}: raise it)")
        argmax = T.argmax(1)
        localised = torch.unique(argmax).numel() >= 0.99 * min(n, m)
        if localised:
            # the step on which the plan sharpens leaves its rows a few percent off the marginals, which
            # the next steps' sweeps settle (the cost sharpens with the plan); on sparse graphs, whose
            # plans keep near-ties, they may not within a few steps: the matching does not wait for them
            since = since + 1 if since is not None else 0
            if since >= _SETTLE_STEPS or float((T.sum(1) * n - 1.0).abs().max()) <= _ROW_TOL:
                break
            continue
        if it % check_every == 0:
            score = _preserved(argmax, source, target_keys, m)
            stale = 0 if score > best + 1e-3 else stale + 1
            best = max(best, score)
            if stale >= patience:
                break
    return T, it, localised


def gw_consensus(edge_index_s: Tensor, edge_index_t: Tensor, num_nodes: tuple[int, int], *,
                 epsilon: float | None = None, max_iter: int = 100, inner_iter: int = 20,
                 check_every: int = 1, patience: int = 10, refine_rounds: int = 20, restarts: int = 12,
                 seed: int = 0, dtype: torch.dtype | None = None,
                 split_above: int | None = SPLIT_ABOVE) -> ConsensusMatching:
    r"""Match two graphs by entropic Gromov-Wasserstein consensus and neighbourhood refinement.

    The first descent starts from the uniform plan. GW is non-convex: at 30%
    rewiring the uniform start can stall in a plan that keeps 14% of the edges
    where the true matching keeps 70%, while starts from a randomly perturbed
    uniform plan, :math:`T_0 \propto 1 + U`, :math:`U_{ij}\sim\mathcal U(0, 1)`,
    localise on the truth in a few steps. So a descent that ends without
    localising (its plan's row maxima not one-to-one) is followed by up to
    ``restarts`` perturbed ones; the answer is the refined matching that
    preserves the most edges, an unsupervised criterion (the quadratic
    assignment objective). A localised descent ends the search.

    Beyond ``split_above`` plan entries (the dense products cost :math:`O(n^3)`
    per step) the graphs are split into
    spectral communities, the descent runs on one matched pair of them and the
    refinement carries that matching to the whole graphs.

    Args:
        edge_index_s: ``[2, E_s]`` source edges; edge_index_t: ``[2, E_t]``
            target edges. Both are made undirected and unweighted, self-loops
            dropped. Disconnected graphs are fine.
        num_nodes: ``(n, m)``; ``n != m`` is allowed (uniform weights).
        epsilon: entropic regularisation of every descent; default
            :func:`default_epsilons` (one or two values, descents cycle through them).
        max_iter: outer GW steps of one descent at most.
        inner_iter: Sinkhorn sweeps per outer step (warm-started).
        check_every: outer steps between scorings of the plan's row maxima by preserved edges.
        patience: scorings in a row without more preserved edges before a descent stops.
        refine_rounds: voting rounds of the refinement that ends each descent.
        restarts: further descents at most after a first one that does not localise
            (``0``: the first alone). Descent ``k`` runs at ``epsilons[k % len(epsilons)]``
            and starts from the uniform plan while ``k < len(epsilons)``, else from a
            perturbed one.
        seed: of the perturbations.
        split_above: plans of more than this many entries ``n * m`` are not formed:
            the graphs are split into communities and one matched pair of them is
            aligned (:func:`~glass_pyg.community_consensus.community_consensus`);
            ``None`` never splits.
        dtype: of the plan, float32 by default (half the memory and time of float64's
            dense products; on the benchmark pairs both gave the same matchings in the
            same number of steps).

    Returns:
        :class:`ConsensusMatching`: the best descent's plan and refined matching;
        ``iterations`` counts the steps of all descents, ``history`` holds each
        descent's preserved fraction.

    Example:
        >>> from glass_pyg.consensus import gw_consensus
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(n=300, rewire_prob=0.1, seed=0)[0]
        >>> res = gw_consensus(pair.edge_index_s, pair.edge_index_t, (300, 300))
        >>> bool(res.preserved > 0.8)
        True
    """
    n, m = num_nodes
    for name, v in (("max_iter", max_iter), ("inner_iter", inner_iter), ("check_every", check_every),
                    ("patience", patience), ("refine_rounds", refine_rounds)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 0:
        raise ValueError(f"restarts must be an integer >= 0, got {restarts!r}")
    if n < 1 or m < 1:
        raise ValueError(f"both graphs need nodes, got num_nodes={num_nodes}")
    if split_above is not None and (not isinstance(split_above, int) or isinstance(split_above, bool)
                                    or split_above < 1):
        raise ValueError(f"split_above must be a positive integer or None, got {split_above!r}")
    t0 = time.perf_counter()
    if dtype is None:
        dtype = torch.float32
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if split_above is not None and n * m > split_above:
        from .community_consensus import community_consensus  # it runs this function on the communities

        found = community_consensus(edge_index_s, edge_index_t, (n, m), epsilon=epsilon, max_iter=max_iter,
                                    inner_iter=inner_iter, check_every=check_every, patience=patience,
                                    refine_rounds=refine_rounds, restarts=restarts, seed=seed, dtype=dtype,
                                    split_above=split_above)
        if found is not None:
            return found
        warnings.warn(f"gw_consensus: no community structure found to split {n} x {m} nodes; running the "
                      f"descent on the whole plan ({n * m} entries, O(n^3) per step)", stacklevel=2)
    A, B = _adjacency(edge_index_s, n, "edge_index_s", dtype), _adjacency(edge_index_t, m, "edge_index_t", dtype)
    if A.values().numel() == 0 or B.values().numel() == 0:
        raise ValueError(f"gw_consensus needs edges in both graphs, got {A.values().numel() // 2} and "
                         f"{B.values().numel() // 2}")
    dens_s = A.values().numel() / max(n * (n - 1), 1)
    dens_t = B.values().numel() / max(m * (m - 1), 1)
    epsilons = default_epsilons(dens_s, dens_t, n, m) if epsilon is None else (float(epsilon),)
    if not all(math.isfinite(e) and e > 0 for e in epsilons):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    const = _constant(A, B, dtype)
    # dense BLAS products run ~20x more multiply-adds per second than sparse ones: dense while the plan is
    # small or the graphs hold more than 1/32 of all pairs (then dense A, B take no more memory than the plan)
    if n * m <= _DENSE_PRODUCTS or min(dens_s, dens_t) >= 1.0 / 32:
        A, B = A.to_dense(), B.to_dense()
    else:
        A, B = A.to_sparse_csr(), B.to_sparse_csr()
    source, target_keys = _undirected(edge_index_s), _edge_keys(edge_index_t, m)
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    best: tuple[float, Tensor, Tensor, bool] | None = None
    steps = 0
    for start in range(restarts + 1):
        eps = epsilons[start % len(epsilons)]
        T = torch.full((n, m), 1.0 / (n * m), dtype=dtype)
        if start >= len(epsilons):
            T = T * (1.0 + torch.rand(n, m, generator=gen, dtype=dtype))
            T = T / T.sum()
        T, it, settled = _gw_descent(A, B, const, T, eps, max_iter, inner_iter, check_every, patience,
                                     source, target_keys)
        steps += it
        with warnings.catch_warnings():  # entries that underflowed leave no full matching: refined next
            warnings.simplefilter("ignore", metrics.DecodingWarning)
            start_perm = metrics.to_permutation(T)
        perm = refine_matching(start_perm, edge_index_s, edge_index_t, num_nodes=(n, m),
                               max_rounds=refine_rounds).perm
        score = _preserved(perm, source, target_keys, m)
        history.append(score)
        if best is None or score > best[0]:
            best = (score, perm, T, settled)
        if settled:
            break
    score, perm, T, settled = best
    marginal = float((T.sum(1).double() * n - 1.0).abs().max())
    return ConsensusMatching(perm=perm, plan=T, iterations=steps, preserved=score, history=tuple(history),
                             marginal_error=marginal, seconds=time.perf_counter() - t0, localised=settled)
