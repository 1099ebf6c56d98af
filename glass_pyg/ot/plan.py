r"""The transport plan returned by the solvers.

The plan is stored in sorted coordinates: row ``i`` of the sorted source holds
``values[l, i, k]`` at sorted target column ``row_start[l, i] + k``. The sort
permutations map back to the caller's order, so every accessor below speaks
original indices. ``values`` carries the gradient (implicit or unrolled).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._limits import DENSE_PAIRS
from . import native
from ._expectation import BlockedExpectation, WindowExpectation, band_costs_from_gram

_DENSE_MERGE = DENSE_PAIRS  # n * m up to which (or up to 8 stored entries per cell) slices merge densely


def inverse_permutation(perm: Tensor) -> Tensor:
    r"""``inv`` with ``inv[l, perm[l, i]] = i`` for permutations ``perm`` (L, n): a scatter, O(n)."""
    idx = torch.arange(perm.shape[-1], device=perm.device).expand_as(perm)
    return torch.empty_like(perm).scatter_(-1, perm, idx)


def _shipped_cost(cost) -> str | None:
    """The name of a cost of :mod:`glass_pyg.losses` that the compiled window costs compute, else None."""
    from .. import losses  # imported here: losses builds on this module
    pair = getattr(cost, "pair", None)
    shipped = (("squared_euclidean", losses._sq_euclidean_pairs), ("squared_geodesic", losses._sq_geodesic_pairs))
    for name, fn in shipped:
        if pair is fn:
            return name
    return None


class _BandDot(torch.autograd.Function):
    r""":math:`\sum_{ik} V_{lik} D_{lik}` per slice: forward a batched product (no band-sized
    temporary), backward one scaled copy per input that needs it (the batched product's own
    backward is a rank-one matrix product, many times slower)."""

    @staticmethod
    def forward(ctx, values: Tensor, d: Tensor) -> Tensor:
        ctx.save_for_backward(values, d)
        L = values.shape[0]
        return torch.bmm(values.reshape(L, 1, -1), d.reshape(L, -1, 1)).view(L)

    @staticmethod
    def backward(ctx, grad: Tensor):
        values, d = ctx.saved_tensors
        g = grad.view(-1, 1, 1)
        return (d * g if ctx.needs_input_grad[0] else None, values * g if ctx.needs_input_grad[1] else None)


def _band_dot(values: Tensor, d: Tensor) -> Tensor:
    return _BandDot.apply(values, d)


@dataclass(frozen=True)
class TransportPlan:
    r"""Entropic plan of one or several slices, with its solver diagnostics.

    Shapes below use ``L`` slices, ``n`` sources, ``m`` targets and window
    width ``W``; accessors drop the slice axis when the scores were 1-D.

    Example:
        >>> import torch
        >>> from glass_pyg.ot import sinkhorn_banded
        >>> g = torch.Generator().manual_seed(0)
        >>> plan = sinkhorn_banded(torch.randn(2, 300, generator=g), torch.randn(2, 300, generator=g), gamma=1.0,
        ...                        temperature="rank")
        >>> plan.num_slices, plan.num_sources, plan.num_targets
        (2, 300, 300)
        >>> plan.averaged().shape                     # sparse (n, m), slices averaged, original order
        torch.Size([300, 300])
        >>> plan.row_argmax().shape, plan.transport_cost().shape
        (torch.Size([2, 300]), torch.Size([2]))
    """

    values: Tensor  #: (L, n, W) plan entries on the band, sorted layout
    row_start: Tensor  #: (L, n) first sorted column of each sorted row's window
    perm_s: Tensor  #: (L, n) original index of the i-th smallest source score
    perm_t: Tensor  #: (L, m) original index of the j-th smallest target score
    num_targets: int  #: m
    f: Tensor  #: (L, n) row potential in score units, original order
    g: Tensor  #: (L, m) column potential, original order
    cost: Tensor  #: (L,) transport cost :math:`\langle P, C\rangle`
    gamma: Tensor  #: (L,) regularisation used (after the rank temperature)
    iterations: int  #: Sinkhorn sweeps plus Newton steps
    newton_steps: int
    marginal_error: Tensor  #: (L,) L1 error of the marginals relative to the mass
    converged: Tensor  #: (L,) bool, marginal error <= tol
    omitted_mass: Tensor  #: (L,) certified bound on the mass outside the band
    band_halfwidth: Tensor  #: (L,) widest distance in ranks from the staircase
    band_radius: Tensor  #: (L,) widest score distance from the staircase partner
    batched: bool  #: whether the inputs had a slice axis
    #: (L,) bool, whether the solve started from the given warm start (``init``) rather than the
    #: exact 1-D dual; ``None`` where the solver takes no warm start
    warm_started: Tensor | None = None

    # --- shape helpers -------------------------------------------------
    def _out(self, x: Tensor) -> Tensor:
        return x if self.batched else x.squeeze(0)

    @property
    def num_slices(self) -> int:
        """Slices ``L``."""
        return self.values.shape[0]

    @property
    def num_sources(self) -> int:
        """Source points ``n``."""
        return self.values.shape[1]

    @property
    def width(self) -> int:
        """Stored entries per row ``W`` (the band window)."""
        return self.values.shape[2]

    @property
    def nnz(self) -> int:
        """Stored entries of the plan (all slices)."""
        return self.values.numel()

    def sorted_cols(self) -> Tensor:
        """(L, n, W) sorted target index of every stored entry."""
        k = torch.arange(self.width, device=self.values.device)
        return self.row_start.unsqueeze(-1) + k

    def index_pairs(self) -> tuple[Tensor, Tensor]:
        """Original (row, column) indices of every stored entry, each (L, n, W)."""
        rows = self.perm_s.unsqueeze(-1).expand_as(self.values)
        cols = torch.gather(self.perm_t, 1, self.sorted_cols().flatten(1)).view_as(self.values)
        return rows, cols

    # --- materialisation ----------------------------------------------
    def to_dense(self) -> Tensor:
        r"""Dense plan ``(n, m)`` or ``(L, n, m)`` in original order (differentiable)."""
        L, n, _ = self.values.shape
        m = self.num_targets
        rows, cols = self.index_pairs()
        flat = (rows * m + cols).flatten(1)
        dense = self.values.new_zeros(L, n * m).scatter_add(1, flat, self.values.flatten(1))
        return self._out(dense.view(L, n, m))

    def to_sparse(self) -> Tensor:
        r"""Coalesced ``torch.sparse_coo_tensor`` of shape ``(n, m)`` or ``(L, n, m)``."""
        L, n, _ = self.values.shape
        rows, cols = self.index_pairs()
        vals = self.values.flatten()
        if self.batched:
            sl = torch.arange(L, device=vals.device).view(L, 1, 1).expand_as(rows)
            idx = torch.stack([sl.flatten(), rows.flatten(), cols.flatten()])
            size = (L, n, self.num_targets)
        else:
            idx = torch.stack([rows.flatten(), cols.flatten()])
            size = (n, self.num_targets)
        return torch.sparse_coo_tensor(idx, vals, size, check_invariants=False).coalesce()

    def averaged(self) -> Tensor:
        r"""The mean plan over slices :math:`\bar P = \frac1L\sum_l P_l` as a coalesced
        sparse ``(n, m)`` tensor in original order (differentiable). Its pattern is every
        slice's whole band window, zeros included: decoders that search the stored pairs
        (:func:`~glass_pyg.metrics.to_permutation` with a lifted cost) see those as
        candidates, and dropping them costs accuracy (SBM n = 1000, r = 0.02: lifted
        decoding 32% -> 20%)."""
        L, n, _ = self.values.shape
        m = self.num_targets
        rows, cols = self.index_pairs()
        vals = self.values.flatten() / L
        if n * m <= max(_DENSE_MERGE, 8 * vals.numel()):
            # the slices' entries merged in a dense buffer: O(n m + nnz), where a coalesce sorts them
            keys = (rows * m + cols).flatten()
            stored = torch.zeros(n * m, dtype=torch.bool, device=vals.device).index_fill_(0, keys, True)
            where = stored.nonzero().squeeze(1)
            summed = vals.new_zeros(n * m).index_add(0, keys, vals)[where]
            return torch.sparse_coo_tensor(torch.stack([where // m, where % m]), summed, (n, m),
                                           is_coalesced=True, check_invariants=False)
        idx = torch.stack([rows.flatten(), cols.flatten()])
        return torch.sparse_coo_tensor(idx, vals, (n, m), check_invariants=False).coalesce()

    # --- decoding --------------------------------------------------------
    def topk(self, k: int) -> tuple[Tensor, Tensor]:
        r"""The ``k`` largest entries of every original row: (values, column indices), each ``(..., n, k)``."""
        if not 1 <= k <= self.width:
            raise ValueError(f"k must be in [1, {self.width}] (the band width), got {k}")
        vals, pos = torch.topk(self.values, k, dim=-1)
        cols_sorted = torch.gather(self.sorted_cols(), 2, pos)
        cols = torch.gather(self.perm_t, 1, cols_sorted.flatten(1)).view_as(pos)
        inv = inverse_permutation(self.perm_s)
        vals = torch.gather(vals, 1, inv.unsqueeze(-1).expand_as(vals))
        cols = torch.gather(cols, 1, inv.unsqueeze(-1).expand_as(cols))
        return self._out(vals), self._out(cols)

    def row_argmax(self) -> Tensor:
        """Column of the largest entry of every original row, ``(n,)`` or ``(L, n)``."""
        return self.topk(1)[1].squeeze(-1)

    # --- expectations ---------------------------------------------------
    def expectation(self, cost: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        r""":math:`\langle P, D\rangle` per slice for a cost given on index pairs.

        ``cost(rows, cols)`` receives original indices of shape ``(L, n, W)``
        and returns costs of that shape; no ``n x m`` matrix is built. A cost
        that also has ``points = (x_s, x_t)`` and ``pair(x, y)`` (the costs of
        :mod:`glass_pyg.losses`) is evaluated in row blocks instead, forward
        and backward (:class:`~glass_pyg.ot._expectation.BlockedExpectation`);
        the two shipped costs on CPU in compiled passes over the band's windows
        (:class:`~glass_pyg.ot._expectation.WindowExpectation`).
        """
        points = getattr(cost, "points", None)
        gram = getattr(cost, "gram", None)
        if points is not None:
            x_s, x_t = points
            kind = _shipped_cost(cost)
            if kind is not None and native.usable(self.values.detach(), x_s.detach(), x_t.detach()) and (
                    kind != "squared_geodesic" or x_s.shape[-1] == 3):
                # a shipped cost: its values (and the points' gradients) in compiled passes over the windows
                return self._out(WindowExpectation.apply(self.values, x_s, x_t, self.perm_s, self.perm_t,
                                                         self.row_start, kind))
            if gram is not None and not (torch.is_grad_enabled() and (x_s.requires_grad or x_t.requires_grad)):
                # fixed points (graph features): the band's costs from blocks of inner products
                d = band_costs_from_gram(x_s, x_t, self.perm_s, self.perm_t, self.row_start, self.width, gram)
                return self._out(_band_dot(self.values, d.to(self.values.dtype)))
        rows, cols = self.index_pairs()
        if points is not None:  # per-point geometry: visit the pairs in row blocks
            x_s, x_t = points
            return self._out(BlockedExpectation.apply(self.values, x_s, x_t, rows, cols, cost.pair))
        d = cost(rows, cols)
        if d.shape != rows.shape:
            raise ValueError(f"cost(rows, cols) must return shape {tuple(rows.shape)}, got {tuple(d.shape)}")
        return self._out(_band_dot(self.values, d.to(self.values.dtype)))

    def entropy(self) -> Tensor:
        r"""Plan entropy :math:`-\sum_{ij} P_{ij}\log P_{ij}` per slice."""
        p = self.values
        # the band's padding zeros contribute 0 with gradient 0 (xlogy's would be -inf * 0 = NaN)
        inside = p > 0
        plogp = torch.where(inside, p * torch.log(torch.where(inside, p, torch.ones_like(p))), torch.zeros_like(p))
        return self._out(-plogp.sum((-2, -1)))

    def transport_cost(self) -> Tensor:
        """:math:`\\langle P, C\\rangle` per slice (scalar for 1-D inputs)."""
        return self._out(self.cost)
