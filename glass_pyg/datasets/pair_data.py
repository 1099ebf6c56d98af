r"""A pair of graphs or point sets with a ground-truth correspondence."""
from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Data


class PairData(Data):
    r"""Source and target of one matching problem in a single :class:`~torch_geometric.data.Data`.

    Attributes (all optional except what the task needs):
        x_s, x_t: node features ``(n, F)``, ``(m, F)``
        edge_index_s, edge_index_t: ``(2, E_s)``, ``(2, E_t)``
        pos_s, pos_t: points ``(n, 3)``, ``(m, 3)`` on :math:`S^2`
        y: ground truth ``[2, M]``, rows (source index, target index)

    Batching with ``DataLoader(..., follow_batch=["x_s", "x_t"])`` offsets
    ``edge_index_s`` and ``y[0]`` by the source sizes and ``edge_index_t``
    and ``y[1]`` by the target sizes, and gives ``x_s_batch``/``x_t_batch``.

    Example:
        >>> import torch
        >>> from torch_geometric.loader import DataLoader
        >>> from glass_pyg.datasets import PairData
        >>> pair = PairData(x_s=torch.randn(3, 2), edge_index_s=torch.tensor([[0, 1], [1, 2]]),
        ...                 x_t=torch.randn(3, 2), edge_index_t=torch.tensor([[2, 1], [1, 0]]),
        ...                 y=torch.tensor([[0, 1, 2], [2, 1, 0]]))
        >>> batch = next(iter(DataLoader([pair, pair], batch_size=2, follow_batch=["x_s", "x_t"])))
        >>> batch.edge_index_s.tolist(), batch.y.tolist()                     # the second pair's indices shift by 3
        ([[0, 1, 3, 4], [1, 2, 4, 5]], [[0, 1, 2, 3, 4, 5], [2, 1, 0, 5, 4, 3]])
    """

    @property
    def num_nodes_s(self) -> int:
        """Nodes (or points) on the source side."""
        return _size(self, "s")

    @property
    def num_nodes_t(self) -> int:
        """Nodes (or points) on the target side."""
        return _size(self, "t")

    def __inc__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == "edge_index_s":
            return self.num_nodes_s
        if key == "edge_index_t":
            return self.num_nodes_t
        if key == "y":
            return torch.tensor([[self.num_nodes_s], [self.num_nodes_t]])
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key: str, value: Any, *args, **kwargs) -> Any:
        if key == "y":
            return -1
        return super().__cat_dim__(key, value, *args, **kwargs)


def _size(data: Data, side: str) -> int:
    for key in (f"x_{side}", f"pos_{side}"):
        value = getattr(data, key, None)
        if value is not None:
            return int(value.size(0))
    value = getattr(data, f"n_{side}", None)
    if value is not None:
        return int(value)
    raise AttributeError(f"PairData has neither x_{side} nor pos_{side} to size the {side} side")


torch.serialization.add_safe_globals([PairData])
