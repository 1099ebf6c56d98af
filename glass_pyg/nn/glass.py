r"""The GLASS alignment head: project, soft-sort per slice, lift the plan back."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import torch
from torch import Tensor
from torch_geometric.typing import OptTensor

from .. import losses
from ..metrics import plan_entropy as _entropy
from ..ot import SolverOptions, TransportPlan, sinkhorn_banded, sinkhorn_dense
from ..ot._sinkhorn_banded import rank_gamma
from ..ot.options import SOLVERS

CostFactory = Callable[[Tensor, Tensor], Callable[[Tensor, Tensor], Tensor]]
_COSTS: dict[str, CostFactory] = {"sq_euclidean": losses.squared_euclidean,
                                  "sq_geodesic": losses.squared_geodesic}


@dataclass(frozen=True)
class GLASSOutput:
    """What one forward pass of :class:`GLASS` returns (statistics are over pairs and slices).

    ``plan`` and ``plan_entropy`` are formed on first access (merging the slices'
    windows is a sort of every stored entry, as costly as the solve itself at
    ``n = 2000``), so a training step that reads only ``loss`` does not pay for them.

    Example:
        >>> import torch
        >>> from glass_pyg.nn import GLASS, GraphProjection
        >>> x = torch.randn(50, 4, dtype=torch.float64)
        >>> out = GLASS(GraphProjection(4, slices=3).double())(x, x)
        >>> len(out.plans), tuple(out.scores_s.shape), out.plan.is_sparse
        (1, (50, 3), True)
    """

    loss: Tensor  #: scalar, mean over pairs of the slice-averaged lifted loss
    plans: tuple[TransportPlan, ...]  #: the solver's result for every pair
    scores_s: Tensor  #: ``(N_s, L)`` source scores
    scores_t: Tensor  #: ``(N_t, L)`` target scores
    iterations: int  #: most solver iterations of any pair
    nnz: int  #: stored plan entries, all pairs and slices
    band_radius: float  #: widest band in score units
    band_halfwidth: int  #: widest band in ranks
    marginal_error: float  #: worst relative marginal error
    converged: bool  #: every pair and slice met the tolerance

    @cached_property
    def plan(self) -> Tensor:
        """Sparse ``(N_s, N_t)`` slice-averaged plan, block diagonal over pairs (differentiable)."""
        idx, val, s0, t0 = [], [], 0, 0
        for plan in self.plans:  # the pairs' rows are consecutive, in order
            avg = plan.averaged()
            idx.append(avg.indices() + torch.tensor([[s0], [t0]], device=avg.device))
            val.append(avg.values())
            s0, t0 = s0 + plan.num_sources, t0 + plan.num_targets
        return torch.sparse_coo_tensor(torch.cat(idx, 1), torch.cat(val), (s0, t0), is_coalesced=True,
                                       check_invariants=False)

    @cached_property
    def plan_entropy(self) -> float:
        """Mean over pairs of the entropy of the averaged plan."""
        return _entropy(self.plan) / len(self.plans)  # the pairs' blocks are disjoint


class GLASS(torch.nn.Module):
    r"""Differentiable alignment of two point sets or graphs by learned 1-D slices.

    For each pair, a shared ``projection`` maps source and target inputs to
    :math:`L` scores per point, :math:`s = f(x^s) \in \mathbb R^{n\times L}`,
    :math:`t = f(x^t) \in \mathbb R^{m\times L}`; every slice is soft-sorted by
    entropic 1-D OT (:func:`~glass_pyg.ot.sinkhorn_banded`), and the lifted loss

    .. math::
        \mathcal L = \frac1L\sum_{l=1}^{L}\langle P_l, D\rangle, \qquad
        D_{ij} = d(g^s_i, g^t_j)^2,

    is evaluated on the plans' support, with :math:`g` the geometry (the
    inputs themselves unless ``geom_s``/``geom_t`` are given).

    Args:
        projection (torch.nn.Module): maps ``(N, ...)`` inputs to ``(N, L)`` scores.
        cost (str or callable): ``"sq_euclidean"`` (graphs: diffusion
            features), ``"sq_geodesic"`` (points on :math:`S^2`), or a factory
            ``cost(g_s, g_t) -> callable(rows, cols)``.
        options (SolverOptions): the solver's options
            (:class:`~glass_pyg.ot.SolverOptions`: ``gamma``, ``temperature``,
            ``max_iter``, ``tol``, ``band_eps``, ``grad``, ``method``); or pass
            those as keywords (not both). Default ``SolverOptions()``.
        solver (str): ``"banded"`` or ``"dense"`` (the reference dense Sinkhorn).
        warm_start (bool): offer each pair's solve the potentials of the
            previous call with the same shapes (banded solver). The solver keeps
            them where they start closer than the exact 1-D dual (small steps at
            absolute temperature); testing them costs a sweep, so after ``k``
            refusals in a row a pair's next ``2^k - 1`` solves (at most 63) start
            cold without the test.

    Shapes:
        - **input:** ``x_s`` :math:`(N_s, \ast)`, ``x_t`` :math:`(N_t, \ast)`,
          optional ``batch_s``/``batch_t`` (sorted pair index of every row)
        - **output:** :class:`GLASSOutput`

    Example:
        >>> import torch
        >>> from glass_pyg.nn import GLASS, GraphProjection
        >>> g = torch.Generator().manual_seed(0)
        >>> x_s = torch.randn(100, 8, generator=g, dtype=torch.float64)
        >>> perm = torch.randperm(100, generator=g)
        >>> head = GLASS(GraphProjection(8, slices=2).double(), cost="sq_euclidean", gamma=0.1)
        >>> out = head(x_s, x_s[perm])                                         # target: the source relabelled
        >>> out.loss.backward()
        >>> out.converged, out.plan.shape, head.projection.weight.grad.shape
        (True, torch.Size([100, 100]), torch.Size([2, 8]))
    """

    def __init__(self, projection: torch.nn.Module, cost: str | CostFactory = "sq_euclidean", *,
                 options: SolverOptions | None = None, solver: str = "banded", warm_start: bool = False,
                 **solver_options: Any) -> None:
        super().__init__()
        if isinstance(cost, str) and cost not in _COSTS:
            raise ValueError(f"cost must be one of {sorted(_COSTS)} or a callable, got {cost!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
        unknown = sorted(set(solver_options) - {f.name for f in fields(SolverOptions)})
        if unknown:
            raise TypeError(f"GLASS got unexpected keyword arguments {unknown}")
        if options is not None and solver_options:
            raise ValueError(f"pass the solver's options either as options= or as keywords, not both "
                             f"(got options and {sorted(solver_options)})")
        self.options = options if options is not None else SolverOptions(**solver_options)
        self.projection = projection
        self.cost = cost
        self.solver = solver
        self.warm_start = warm_start
        self._warm: dict[int, tuple[Tensor, Tensor]] = {}
        #: per pair: warm starts refused in a row, solves left to start cold without offering one
        self._refusals: dict[int, tuple[int, int]] = {}

    def reset_parameters(self) -> None:
        """Reset the projection's parameters."""
        if hasattr(self.projection, "reset_parameters"):
            self.projection.reset_parameters()

    def forward(self, x_s: Tensor, x_t: Tensor, batch_s: OptTensor = None, batch_t: OptTensor = None,
                *, geom_s: OptTensor = None, geom_t: OptTensor = None,
                gamma: float | None = None) -> GLASSOutput:
        """Solve every pair of the batch and return the lifted loss, plans and solver figures."""
        gamma = self.options.gamma if gamma is None else float(gamma)
        geom_s = x_s if geom_s is None else geom_s
        geom_t = x_t if geom_t is None else geom_t
        if geom_s.size(0) != x_s.size(0) or geom_t.size(0) != x_t.size(0):
            raise ValueError("geom_s/geom_t must have one row per input row")
        scores_s, scores_t = self.projection(x_s), self.projection(x_t)
        ptr_s, ptr_t = _pointers(batch_s, x_s.size(0), "batch_s"), _pointers(batch_t, x_t.size(0), "batch_t")
        if ptr_s.numel() != ptr_t.numel():
            raise ValueError(f"batch_s and batch_t hold {ptr_s.numel() - 1} and {ptr_t.numel() - 1} pairs")
        factory = _COSTS[self.cost] if isinstance(self.cost, str) else self.cost
        plans, pair_losses = [], []
        for k in range(ptr_s.numel() - 1):
            s0, s1, t0, t1 = int(ptr_s[k]), int(ptr_s[k + 1]), int(ptr_t[k]), int(ptr_t[k + 1])
            if s1 == s0 or t1 == t0:
                raise ValueError(f"pair {k} of the batch has {s1 - s0} source and {t1 - t0} target rows: "
                                 "every pair id up to the largest needs rows on both sides")
            plan = self._solve(scores_s[s0:s1].t(), scores_t[t0:t1].t(), gamma, k)
            pair_losses.append(losses.lifted_loss(plan, factory(geom_s[s0:s1], geom_t[t0:t1])))
            plans.append(plan)
        return GLASSOutput(
            loss=torch.stack(pair_losses).mean(), plans=tuple(plans), scores_s=scores_s, scores_t=scores_t,
            iterations=max(p.iterations for p in plans), nnz=sum(p.nnz for p in plans),
            band_radius=max(float(p.band_radius.max()) for p in plans),
            band_halfwidth=max(int(p.band_halfwidth.max()) for p in plans),
            marginal_error=max(float(p.marginal_error.max()) for p in plans),
            converged=all(bool(p.converged.all()) for p in plans))

    def warm_state(self) -> dict[str, list[Tensor]]:
        """The warm-start potentials and refusal counts, for checkpoints (so a resumed run repeats
        the same solves): per pair ``[f, g, tensor([refusals, cold_left])]``."""
        return {str(k): [f, g, torch.tensor(self._refusals.get(k, (0, 0)))] for k, (f, g) in self._warm.items()}

    def load_warm_state(self, state: dict[str, list[Tensor]]) -> None:
        """Restore the state saved by :meth:`warm_state` (also its older ``[f, g]`` form)."""
        self._warm = {int(k): (v[0], v[1]) for k, v in state.items()}
        self._refusals = {int(k): (int(v[2][0]), int(v[2][1])) for k, v in state.items() if len(v) > 2}

    def _solve(self, s: Tensor, t: Tensor, gamma: float, key: int) -> TransportPlan:
        if self.solver == "dense":
            C = (s.unsqueeze(-1) - t.unsqueeze(-2)) ** 2
            g = torch.full((s.size(0),), gamma, dtype=s.dtype, device=s.device)
            if self.options.temperature == "rank":
                g = rank_gamma(g, s, t)
            return sinkhorn_dense(C, gamma=g, max_iter=self.options.max_iter, tol=self.options.tol)
        init = self._warm.get(key) if self.warm_start else None
        if init is not None and (init[0].shape != s.shape or init[1].shape != t.shape):
            init = None
        refusals, cold_left = self._refusals.get(key, (0, 0))
        if init is not None and cold_left > 0:
            init, cold_left = None, cold_left - 1
        plan = sinkhorn_banded(s, t, **(self.options.as_dict() | {"gamma": gamma}), init=init)
        if self.warm_start:
            if init is not None:
                refusals = 0 if bool(plan.warm_started.any()) else refusals + 1
                cold_left = 2 ** min(refusals, 6) - 1
            self._refusals[key] = (refusals, cold_left)
            self._warm[key] = (plan.f.detach().to(s.dtype), plan.g.detach().to(t.dtype))
        return plan

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.projection}, cost={self.cost!r}, gamma={self.options.gamma:g}, "
                f"temperature={self.options.temperature!r}, solver={self.solver!r})")


def _pointers(batch: OptTensor, size: int, name: str) -> Tensor:
    if batch is None:
        return torch.tensor([0, size])
    if batch.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(batch.shape)}")
    if batch.is_floating_point() or batch.is_complex():
        raise ValueError(f"{name} must hold integer pair ids, got dtype {batch.dtype}")
    if size and int(batch.min()) < 0:
        raise ValueError(f"{name} holds negative pair ids (smallest {int(batch.min())}); ids start at 0")
    if size and bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name} must be sorted (PyG batch vectors are)")
    counts = torch.bincount(batch.cpu(), minlength=int(batch.max()) + 1 if size else 0)
    return torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
