r"""Learned linear projections of node features to 1-D scores."""
from __future__ import annotations

import math

import torch
from torch import Tensor


class GraphProjection(torch.nn.Module):
    r"""The learned linear form :math:`\psi \mapsto s = \psi W^\top \in \mathbb R^{L}`.

    Each of the ``slices`` rows of :math:`W` is a direction in feature space;
    with ``normalize=True`` rows are used at unit norm, so the spread of the
    scores is set by the features and the OT temperature keeps its meaning
    during training.

    Args:
        in_channels (int): feature dimension :math:`d`.
        slices (int): number of slices :math:`L`.
        normalize (bool): use unit-norm directions.

    Shapes:
        - **input:** :math:`(N, d)`
        - **output:** :math:`(N, L)`

    Example:
        >>> import torch
        >>> from glass_pyg.nn import GraphProjection
        >>> proj = GraphProjection(32, slices=2)
        >>> proj(torch.randn(10, 32)).shape
        torch.Size([10, 2])
    """

    def __init__(self, in_channels: int, slices: int = 2, normalize: bool = True) -> None:
        super().__init__()
        if in_channels < 1 or slices < 1:
            raise ValueError(f"in_channels and slices must be >= 1, got {in_channels}, {slices}")
        self.in_channels, self.slices, self.normalize = in_channels, slices, normalize
        self.weight = torch.nn.Parameter(torch.empty(slices, in_channels))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draw the directions from :math:`\mathcal N(0, 1/F)` (from ``generator`` when given)."""
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0 / math.sqrt(self.in_channels), generator=generator)

    def directions(self) -> Tensor:
        """The ``(L, F)`` projection directions (unit rows when ``normalize``)."""
        w = self.weight
        return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) if self.normalize else w

    def forward(self, psi: Tensor) -> Tensor:
        """Scores ``(N, L)`` of node features ``psi`` ``(N, F)``."""
        if psi.dim() != 2 or psi.size(1) != self.in_channels:
            raise ValueError(f"psi must have shape (N, {self.in_channels}), got {tuple(psi.shape)}")
        w = self.directions()
        return psi @ w.to(psi.dtype).t()

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({self.in_channels}, slices={self.slices}, "
                f"normalize={self.normalize})")
