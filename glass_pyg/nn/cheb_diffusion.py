r"""Heat diffusion on a graph as a PyG message-passing layer (no eigendecomposition)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import coalesce, is_torch_sparse_tensor, spmm, to_edge_index

from ..geometry.heat import heat_chebyshev_coefficients, sym_norm_operator


class ChebDiffusion(MessagePassing):
    r"""The heat kernel :math:`e^{-\tau L}\mathbf X` of the symmetric normalised Laplacian.

    .. math::
        e^{-\tau L}\mathbf X \approx \sum_{k=0}^{K} c_k(\tau)\, T_k(\tilde L)\mathbf X,
        \qquad \tilde L = L - I = -D^{-1/2} A D^{-1/2},

    with :math:`T_k` the Chebyshev polynomials (:math:`T_0 X = X`,
    :math:`T_1 X = \tilde L X`, :math:`T_{k+1} X = 2\tilde L T_k X - T_{k-1} X`)
    and the closed-form Bessel coefficients of
    :func:`glass_pyg.geometry.heat_chebyshev_coefficients`. Cost
    :math:`O(K |E| F)` for any number of diffusion times; isolated nodes keep
    their signal (:math:`L_{vv} = 0`).

    The heat kernel is that of an undirected graph: a directed edge list or
    adjacency is symmetrised to :math:`\tfrac12(A + A^\top)` (so the spectrum
    of :math:`\tilde L` lies in :math:`[-1, 1]` and the error bound below
    holds), while an undirected graph that lists both directions is used as
    given. Every input form (``edge_index``, ``torch.sparse`` COO/CSR/CSC
    ``adj_t``, ``SparseTensor``) gives the same operator; repeated edges, and
    the entries of an uncoalesced COO tensor, add up. The caller's tensors are
    never modified.

    Args:
        tau (float or sequence of floats): diffusion time(s) :math:`\tau \ge 0`.
            Several times give multi-scale output, concatenated along features.
        K (int): Chebyshev degree (``cheby_degree`` in the configs). The error
            is below :math:`2(\tau/2)^{K+1}/(K+1)!`; ``K = 20`` reaches ``1e-6``
            well beyond :math:`\tau = 1`.
        **kwargs (optional): arguments of :class:`torch_geometric.nn.conv.MessagePassing`.

    Shapes:
        - **input:** node features :math:`(|\mathcal V|, F)` or :math:`(|\mathcal V|,)`,
          edge indices :math:`(2, |\mathcal E|)` (undirected graphs list both
          directions) or a sparse ``adj_t`` (``torch.sparse`` or
          ``torch_sparse.SparseTensor``), edge weights :math:`(|\mathcal E|)` *(optional)*
        - **output:** :math:`(|\mathcal V|, T F)` for :math:`T` diffusion times

    Example:
        >>> import torch
        >>> from glass_pyg.nn import ChebDiffusion
        >>> edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])           # a path of 3 nodes
        >>> conv = ChebDiffusion(tau=0.5, K=12)
        >>> conv
        ChebDiffusion(tau=0.5, K=12)
        >>> h = conv(torch.eye(3, dtype=torch.float64), edge_index)           # columns of exp(-0.5 L)
        >>> L = torch.eye(3, dtype=torch.float64) - torch.tensor([[0, 2 ** -0.5, 0], [2 ** -0.5, 0, 2 ** -0.5],
        ...                                                        [0, 2 ** -0.5, 0]], dtype=torch.float64)
        >>> torch.allclose(h, torch.linalg.matrix_exp(-0.5 * L), atol=1e-10)
        True
    """

    def __init__(self, tau: float | Sequence[float] = 0.5, K: int = 12, **kwargs) -> None:
        kwargs.setdefault("aggr", "add")
        super().__init__(**kwargs)
        coeffs = heat_chebyshev_coefficients(tau, K)
        self.tau = tuple(float(v) for v in ([tau] if isinstance(tau, (int, float)) else tau))
        self.K = K
        self.register_buffer("coeffs", coeffs, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Recompute the Chebyshev coefficients (the layer has no trainable weights)."""
        super().reset_parameters()
        self.coeffs.copy_(heat_chebyshev_coefficients(self.tau, self.K))

    def forward(self, x: Tensor, edge_index: Adj, edge_weight: OptTensor = None) -> Tensor:
        """Diffuse ``x`` over the graph at every diffusion time: ``(N, T F)``."""
        if x.dim() == 1:
            x = x.unsqueeze(-1)
        if x.dim() != 2 or not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor of shape (num_nodes, F), got "
                             f"{tuple(x.shape)} of {x.dtype}")
        return self._diffuse(x, *self._normalise(edge_index, edge_weight, x.size(0), x.dtype))

    def _diffuse(self, x: Tensor, adj: Adj, norm: OptTensor, isolated: Tensor) -> Tensor:
        """The expansion on a prepared operator (:meth:`_normalise`), which callers diffusing several
        signals over one graph prepare once."""
        num_nodes = x.size(0)
        coeffs = self.coeffs.to(x.dtype)

        def apply(h: Tensor) -> Tensor:  # \tilde L h
            out = self.propagate(adj, x=h, norm=norm)
            return out - isolated.unsqueeze(-1).to(h.dtype) * h

        t_prev, t_cur = x, apply(x) if self.K > 0 else x
        out = coeffs[:, 0].view(-1, 1, 1) * x
        if self.K > 0:
            out = out + coeffs[:, 1].view(-1, 1, 1) * t_cur
        for k in range(2, self.K + 1):
            t_prev, t_cur = t_cur, 2.0 * apply(t_cur) - t_prev
            out = out + coeffs[:, k].view(-1, 1, 1) * t_cur
        return out.permute(1, 0, 2).reshape(num_nodes, -1)

    def message(self, x_j: Tensor, norm: OptTensor) -> Tensor:
        """The neighbour's signal weighted by the normalised edge weight."""
        return norm.view(-1, 1) * x_j

    def message_and_aggregate(self, adj_t: Adj, x: Tensor) -> Tensor:
        r"""The fused sparse product :math:`\tilde A x` for sparse adjacencies."""
        if isinstance(adj_t, SparseTensor):
            return spmm(adj_t, x, reduce=self.aggr)
        return torch.sparse.mm(adj_t, x)

    def _normalise(self, edge_index: Adj, edge_weight: OptTensor, num_nodes: int,
                   dtype: torch.dtype) -> tuple[Adj, OptTensor, Tensor]:
        """The operator :math:`\\tilde L` of the symmetrised graph, in the layout of the input adjacency."""
        if isinstance(edge_index, SparseTensor):
            self._check_sparse_size(tuple(edge_index.sparse_sizes()), num_nodes)
            row, col, value = edge_index.coo()  # adj_t: rows are targets
            (src, dst), w = _symmetrised(torch.stack([col, row]), self._weights(value, row), num_nodes)
            norm, isolated = sym_norm_operator(torch.stack([src, dst]), w, num_nodes, dtype)
            return SparseTensor(row=dst, col=src, value=norm, sparse_sizes=(num_nodes, num_nodes),
                                trust_data=True), None, isolated
        if is_torch_sparse_tensor(edge_index):
            self._check_sparse_size(tuple(edge_index.shape), num_nodes)
            if edge_index.layout == torch.sparse_coo:
                # a copy: PyG's to_edge_index marks a COO tensor coalesced in place, and the caller's
                # uncoalesced entries (duplicates add up, in any order) must keep meaning what they mean
                edge_index = edge_index.coalesce() if not edge_index.is_coalesced() else edge_index.detach()
            index, value = to_edge_index(edge_index)  # rows are targets (adj_t)
            (src, dst), w = _symmetrised(index.flip(0), self._weights(value, index[0]), num_nodes)
            norm, isolated = sym_norm_operator(torch.stack([src, dst]), w, num_nodes, dtype)
            # the product runs K times: in the CSR layout, which is much faster than COO's
            adj = torch.sparse_coo_tensor(torch.stack([dst, src]), norm, (num_nodes, num_nodes),
                                          check_invariants=False).coalesce().to_sparse_csr()
            return adj, None, isolated
        if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
            raise ValueError(f"edge_index must be an integer tensor of shape (2, E), got "
                             f"{tuple(edge_index.shape)} of {edge_index.dtype}")
        if not torch.compiler.is_compiling() and edge_index.numel() > 0 and (
                int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"edge_index holds node indices outside [0, {num_nodes}) "
                             f"(num_nodes is x.size(0))")
        if edge_weight is not None and edge_weight.shape != (edge_index.size(1),):
            raise ValueError(f"edge_weight must have shape ({edge_index.size(1)},), got "
                             f"{tuple(edge_weight.shape)}")
        edge_index, w = _symmetrised(edge_index, self._weights(edge_weight, edge_index[0]), num_nodes)
        norm, isolated = sym_norm_operator(edge_index, w, num_nodes, dtype)
        return edge_index, norm, isolated

    @staticmethod
    def _weights(w: OptTensor, like: Tensor) -> OptTensor:
        if w is None:
            return None
        if not torch.compiler.is_compiling() and w.numel() > 0 and not bool(
                (torch.isfinite(w) & (w >= 0)).all()):
            raise ValueError("edge weights must be finite and >= 0")
        return w

    @staticmethod
    def _check_sparse_size(size: tuple, num_nodes: int) -> None:
        if size != (num_nodes, num_nodes):
            raise ValueError(f"sparse adjacency must have shape ({num_nodes}, {num_nodes}) to "
                             f"match x, got {size}")

    def __repr__(self) -> str:
        tau = self.tau[0] if len(self.tau) == 1 else list(self.tau)
        return f"{self.__class__.__name__}(tau={tau}, K={self.K})"



def _symmetrised(edge_index: Tensor, edge_weight: OptTensor, num_nodes: int) -> tuple[Tensor, OptTensor]:
    r"""The edges of :math:`\tfrac12(A + A^\top)`, or the input itself when :math:`A` is symmetric.

    ``edge_index`` lists ``source -> target`` pairs; listed duplicates add up.
    An undirected graph listing both directions comes back unchanged (same
    order, no copy), so only directed lists pay for the doubling.
    """
    if edge_index.numel() == 0:
        return edge_index, edge_weight
    w = edge_weight if edge_weight is not None else torch.ones(edge_index.size(1), device=edge_index.device)
    fwd, w_fwd = coalesce(edge_index, w, num_nodes, reduce="sum")
    bwd, w_bwd = coalesce(edge_index.flip(0), w, num_nodes, reduce="sum")
    if fwd.shape == bwd.shape and torch.equal(fwd, bwd) and torch.equal(w_fwd, w_bwd):
        return edge_index, edge_weight
    both, w_both = coalesce(torch.cat([edge_index, edge_index.flip(0)], 1), torch.cat([w, w]) * 0.5,
                            num_nodes, reduce="sum")
    return both, w_both
