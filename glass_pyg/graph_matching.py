r"""The answer of the graph pipeline: a GLASS plan decoded, refined, and where that does not take hold, consensus.

Three stages, each run only where the one before has not settled:

1. the plan's lifted decoding (:func:`~glass_pyg.metrics.to_permutation` with the
   lifted cost) seeds the neighbourhood votes of
   :func:`~glass_pyg.refinement.refine_matching`, first for ``probe_rounds``
   rounds at most: the probe ends early once the fraction of edges kept has
   grown less than 25% over two rounds (from the third);
2. if that matching keeps under half the source's edges it has not bootstrapped
   (at 20% rewiring of the SBM benchmark pairs, local features leave it at
   chance and every round changes ~99% of the rows), and the GW consensus stage
   (:func:`~glass_pyg.consensus.gw_consensus`) runs;
3. unless the consensus won, the refinement continues to ``refine_rounds``
   (a slow bootstrap on sparse graphs needs about 30 rounds).

Of the matchings found, the one preserving the most edges is the answer (the
quadratic assignment objective: no labels needed). The probe is what keeps the
pipeline from paying the full refinement before a consensus that is needed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from . import metrics
from ._choices import CONSENSUS_MODES
from .consensus import ConsensusMatching, _edge_keys, _preserved, _undirected, gw_consensus
from .metrics import PlanLike, _shape
from .refinement import refine_matching

__all__ = ["GraphMatching", "match_graphs"]

_GROWTH = 1.25  # a probed refinement keeping fewer than this many times the edges it kept two rounds before stalls


@dataclass(frozen=True)
class GraphMatching:
    """The result of :func:`match_graphs`.

    Example:
        >>> import torch
        >>> from glass_pyg import match_graphs
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(root=None, n=200, seed=0)[0]
        >>> res = match_graphs(torch.ones(200, 200) / 200 ** 2, None, pair.edge_index_s, pair.edge_index_t)
        >>> res.stage in ("refinement", "consensus"), 0.0 <= res.preserved <= 1.0
        (True, True)
    """

    perm: Tensor  #: ``(n,)`` the answer: target of every source node (``-1``: unmatched)
    preserved: float  #: fraction of the source's edges that ``perm`` maps onto target edges
    lifted: Tensor  #: ``(n,)`` the plan's decoding that seeded the refinement
    stage: str  #: what gave the answer: ``"refinement"`` or ``"consensus"``
    refine_rounds: int  #: voting rounds run
    consensus: ConsensusMatching | None  #: the consensus stage's result where it was needed (run or reused)
    seconds: float  #: wall time of this call (a reused consensus result is not counted)


def match_graphs(plan: PlanLike, cost: Callable[[Tensor, Tensor], Tensor] | None, edge_index_s: Tensor,
                 edge_index_t: Tensor, *, consensus: str = "auto", refine_rounds: int = 20, probe_rounds: int = 8,
                 assignment: str | None = None, seed: int = 0,
                 reuse: ConsensusMatching | None = None) -> GraphMatching:
    r"""Match two graphs from a GLASS plan between their nodes (the pipeline of ``glass-pyg graph``).

    Args:
        plan: ``(n, m)`` plan (sparse or dense tensor, or a
            :class:`~glass_pyg.ot.TransportPlan`), e.g. ``GLASSOutput.plan``.
        cost: the lifted cost on index pairs for the decoding (e.g.
            :func:`glass_pyg.losses.squared_euclidean` of the node features);
            ``None`` decodes the plan's weights.
        edge_index_s: ``[2, E_s]`` source edges; edge_index_t: ``[2, E_t]``
            target edges (made undirected; disconnected graphs are fine).
        consensus: ``"auto"`` runs the GW consensus stage where the probed
            refinement keeps under half the source's edges, ``"always"`` runs
            it, ``"never"`` does not.
        refine_rounds: voting rounds at most, all refinement calls together.
        probe_rounds: rounds at most before the consensus decision (fewer where the
            refinement stalls).
        assignment: of the lifted decoding (see :func:`~glass_pyg.metrics.to_permutation`).
        seed: of the consensus stage's perturbed starts.
        reuse: a consensus result of the same two graphs to use instead of
            running the stage again (it does not depend on the plan).

    Returns:
        :class:`GraphMatching`.

    Example:
        >>> from glass_pyg import match_graphs
        >>> import torch
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(n=200, rewire_prob=0.0, seed=0)[0]
        >>> uniform = torch.full((200, 200), 1 / 200 ** 2)
        >>> res = match_graphs(uniform, None, pair.edge_index_s, pair.edge_index_t)
        >>> res.stage, res.preserved
        ('consensus', 1.0)
    """
    if consensus not in CONSENSUS_MODES:
        raise ValueError(f"consensus must be one of {CONSENSUS_MODES}, got {consensus!r}")
    for name, v in (("refine_rounds", refine_rounds), ("probe_rounds", probe_rounds)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    t0 = time.perf_counter()
    n, m = _shape(plan)
    lifted = metrics.to_permutation(plan, cost, assignment=assignment)
    source, target_keys = _undirected(edge_index_s), _edge_keys(edge_index_t, m)
    kept_by_round: list[float] = []

    def stalled(rounds: int, perm: Tensor) -> bool:
        # a refinement that bootstraps keeps more edges every round (at 10% rewiring: 12%, 13%, 17%, 38%,
        # 87%); one that will not stays flat (at 20%: 8.6%, 9.3%, 8.4%, ...): stop probing those
        kept_by_round.append(_preserved(perm, source, target_keys, m))
        return (consensus == "auto" and rounds >= 3 and kept_by_round[-1] < 0.5
                and kept_by_round[-1] < _GROWTH * kept_by_round[-3])

    probe = refine_matching(lifted, edge_index_s, edge_index_t, num_nodes=(n, m),
                            max_rounds=min(probe_rounds, refine_rounds), callback=stalled)
    perm, rounds, converged = probe.perm, probe.rounds, probe.converged
    # the last round was scored, or it reproduced the round before, which was
    kept = kept_by_round[-1] if kept_by_round else _preserved(perm, source, target_keys, m)
    stage, found = "refinement", None
    if consensus == "always" or (consensus == "auto" and kept < 0.5):
        found = reuse if reuse is not None else gw_consensus(edge_index_s, edge_index_t, (n, m), seed=seed)
        if found.preserved > kept:
            perm, kept, stage = found.perm, found.preserved, "consensus"
    if stage == "refinement" and not converged and rounds < refine_rounds:
        more = refine_matching(perm, edge_index_s, edge_index_t, num_nodes=(n, m),
                               max_rounds=refine_rounds - rounds)
        perm, rounds = more.perm, rounds + more.rounds
        kept = _preserved(perm, source, target_keys, m)
        if found is not None and found.preserved > kept:
            perm, kept, stage = found.perm, found.preserved, "consensus"
    return GraphMatching(perm=perm, preserved=kept, lifted=lifted, stage=stage, refine_rounds=rounds,
                         consensus=found, seconds=time.perf_counter() - t0)
