r"""Eigen-free node features for graph matching: heat diffusion of a signal bank."""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor
from torch_geometric.typing import Adj, OptTensor, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor, to_edge_index, to_torch_csr_tensor

from ..geometry.heat import weighted_degree
from .cheb_diffusion import ChebDiffusion


class DiffusionFeatures(torch.nn.Module):
    r"""Permutation-equivariant node features :math:`\psi_\tau \in \mathbb R^{N \times d}`.

    The input signals are a bank of structural signals (degree :math:`d`,
    :math:`\log(1 + d)`, mean and spread of the neighbours' degrees) followed
    by the node features, if any; feature columns constant on every graph of
    the call (such as the constant feature of featureless datasets) carry no
    information and are dropped. With :math:`H = e^{-\tau L}` the features are

    .. math::
        \psi = [Z_0, Z_1, Z_2, \dots]_{:, :d}, \qquad
        Z_{r+1} = \mathrm{std}\big(\Pi H Z_r\big),

    where :math:`\mathrm{std}` centres and scales every column per graph (so
    the two graphs of a pair are comparable) and :math:`\Pi` removes the
    component along :math:`D^{1/2}\mathbf 1`, the fixed point of :math:`H`.
    Several diffusion times interleave their chains. Relabelling the nodes
    relabels the rows of :math:`\psi` and nothing else.

    Args:
        feat_dim (int): number of output features :math:`d`.
        tau (float or sequence of floats): diffusion time(s).
        K (int): Chebyshev degree of :class:`ChebDiffusion`.

    Shapes:
        - **input:** node features :math:`(N, F)` or ``None``, edge indices
          :math:`(2, E)` or a sparse ``adj_t``, edge weights :math:`(E)`,
          ``batch`` :math:`(N)` for several graphs, ``num_nodes`` when ``x`` is ``None``
        - **output:** :math:`(N, d)`

    Example:
        >>> import torch
        >>> from torch_geometric.utils import erdos_renyi_graph
        >>> from glass_pyg.nn import DiffusionFeatures
        >>> torch.manual_seed(0) and None
        >>> edge_index = erdos_renyi_graph(50, 0.1)
        >>> feat = DiffusionFeatures(feat_dim=16, tau=0.5, K=12)
        >>> psi = feat(None, edge_index, num_nodes=50, dtype=torch.float64)
        >>> perm = torch.randperm(50)                                         # relabel the nodes
        >>> inv = torch.empty_like(perm); inv[perm] = torch.arange(50)
        >>> psi_relabelled = feat(None, inv[edge_index], num_nodes=50, dtype=torch.float64)
        >>> tuple(psi.shape), torch.allclose(psi_relabelled[inv], psi, atol=1e-10)
        ((50, 16), True)
    """

    def __init__(self, feat_dim: int = 32, tau: float | Sequence[float] = 0.5, K: int = 12) -> None:
        super().__init__()
        if not isinstance(feat_dim, int) or feat_dim < 1:
            raise ValueError(f"feat_dim must be a positive integer, got {feat_dim!r}")
        taus = [tau] if isinstance(tau, (int, float)) else list(tau)
        self.feat_dim = feat_dim
        self.diffusions = torch.nn.ModuleList(ChebDiffusion(float(v), K) for v in taus)

    def reset_parameters(self) -> None:
        """Recompute the diffusions' coefficients (the features have no trainable weights)."""
        for d in self.diffusions:
            d.reset_parameters()

    def forward(self, x: OptTensor, edge_index: Adj, edge_weight: OptTensor = None,
                batch: OptTensor = None, num_nodes: int | None = None,
                dtype: torch.dtype | None = None) -> Tensor:
        """Features ``(N, feat_dim)`` of every node (one graph, or the graphs of ``batch``)."""
        edge_index, edge_weight = _as_edge_index(edge_index, edge_weight)
        if x is not None:
            num_nodes = x.size(0)
        elif num_nodes is None:
            raise ValueError("num_nodes is required when x is None (isolated nodes cannot be inferred)")
        if not isinstance(num_nodes, int) or num_nodes < 1:
            raise ValueError(f"DiffusionFeatures needs a graph with nodes, got num_nodes={num_nodes!r}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2 or edge_index.is_floating_point():
            raise ValueError(f"edge_index must be an integer tensor of shape (2, E), got "
                             f"{tuple(edge_index.shape)} of {edge_index.dtype}")
        if edge_index.numel() and (int(edge_index.min()) < 0 or int(edge_index.max()) >= num_nodes):
            raise ValueError(f"edge_index holds node indices in [{int(edge_index.min())}, "
                             f"{int(edge_index.max())}], outside [0, {num_nodes}) (num_nodes={num_nodes})")
        if dtype is None:
            dtype = x.dtype if x is not None and x.is_floating_point() else torch.get_default_dtype()
        device = edge_index.device
        if batch is None:
            batch = torch.zeros(num_nodes, dtype=torch.long, device=device)
        elif batch.shape != (num_nodes,):
            raise ValueError(f"batch must have shape ({num_nodes},), got {tuple(batch.shape)}")
        num_graphs = int(batch.max()) + 1 if num_nodes > 0 else 0
        deg = weighted_degree(edge_index, edge_weight, num_nodes, dtype)
        signals = [_structural(edge_index, edge_weight, deg)]
        if x is not None:
            x = x.reshape(num_nodes, -1).to(dtype)
            signals.append(x[:, _varies(x, batch, num_graphs)])
        z0 = _standardise(torch.cat(signals, 1), batch, num_graphs)
        if not bool((z0 != 0).any()):
            raise ValueError("no node signal varies over the graph (a regular graph without features); "
                             "DiffusionFeatures cannot tell its nodes apart")
        root = deg.sqrt()
        root = root / _graph_sum(root * root, batch, num_graphs).sqrt().clamp_min(1e-300)[batch]
        adj_t = _csr_adjacency(edge_index, edge_weight, num_nodes, dtype)
        operator = self.diffusions[0]._normalise(adj_t, None, num_nodes, dtype)  # one graph: prepared once
        blocks, chains = [z0], [z0] * len(self.diffusions)
        while sum(b.size(1) for b in blocks) < self.feat_dim:
            for i, diff in enumerate(self.diffusions):
                h = diff._diffuse(chains[i], *operator)
                h = h - root.unsqueeze(1) * _graph_sum(root.unsqueeze(1) * h, batch, num_graphs)[batch]
                chains[i] = _standardise(h, batch, num_graphs)
                blocks.append(chains[i])
        return torch.cat(blocks, 1)[:, :self.feat_dim]

    def __repr__(self) -> str:
        taus = [d.tau[0] for d in self.diffusions]
        tau = taus[0] if len(taus) == 1 else taus
        return f"{self.__class__.__name__}(feat_dim={self.feat_dim}, tau={tau}, K={self.diffusions[0].K})"


def _as_edge_index(adj: Adj, edge_weight: OptTensor) -> tuple[Tensor, OptTensor]:
    """Any PyG adjacency as ``(edge_index source -> target, weights)``."""
    if isinstance(adj, SparseTensor) or is_torch_sparse_tensor(adj):
        index, value = to_edge_index(adj)  # adj_t: rows are targets
        return index.flip(0), value
    return adj, edge_weight


def _csr_adjacency(edge_index: Tensor, edge_weight: OptTensor, num_nodes: int, dtype: torch.dtype) -> Tensor:
    """``adj_t`` (rows are targets) as a CSR tensor: the chain applies the heat kernel
    ``K`` times per block of signals, and a CSR product is faster than gather-scatter
    message passing (benchmarks/RESULTS.md, design measurements)."""
    w = torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device) if edge_weight is None \
        else edge_weight.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return to_torch_csr_tensor(edge_index.flip(0), w, size=(num_nodes, num_nodes))


def _structural(edge_index: Tensor, w: OptTensor, deg: Tensor) -> Tensor:
    """Degree, log-degree, and the mean and spread of the neighbours' degrees."""
    src, dst = edge_index[0], edge_index[1]
    w = torch.ones(src.numel(), dtype=deg.dtype, device=deg.device) if w is None else w.to(deg.dtype)
    safe = deg.clamp_min(torch.finfo(deg.dtype).tiny)
    mean = torch.zeros_like(deg).index_add_(0, dst, w * deg[src]) / safe
    second = torch.zeros_like(deg).index_add_(0, dst, w * deg[src] ** 2) / safe
    spread = (second - mean ** 2).clamp_min(0).sqrt()
    return torch.stack([deg, torch.log1p(deg), mean, spread], 1)


def _graph_sum(z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    out = z.new_zeros((num_graphs,) + z.shape[1:])
    return out.index_add_(0, batch, z)


def _varies(z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Columns that are not constant on at least one graph."""
    lo = z.new_full((num_graphs, z.size(1)), float("inf")).scatter_reduce(
        0, batch.unsqueeze(1).expand_as(z), z, "amin")
    hi = z.new_full((num_graphs, z.size(1)), -float("inf")).scatter_reduce(
        0, batch.unsqueeze(1).expand_as(z), z, "amax")
    scale = torch.maximum(hi.abs(), lo.abs()).clamp_min(1.0)
    return ((hi - lo) > 1e-9 * scale).any(0)


def _standardise(z: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Zero mean and unit variance per column and graph (constant columns become 0)."""
    count = _graph_sum(torch.ones_like(z[:, :1]), batch, num_graphs).clamp_min(1)
    mean = _graph_sum(z, batch, num_graphs) / count
    zc = z - mean[batch]
    std = (_graph_sum(zc * zc, batch, num_graphs) / count).sqrt()
    tiny = 1e-12 * (1 + mean.abs())
    inv = torch.where(std > tiny, 1.0 / std.clamp_min(1e-300), torch.zeros_like(std))
    return zc * inv[batch]
