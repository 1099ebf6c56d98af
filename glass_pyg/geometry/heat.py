r"""The graph heat kernel :math:`e^{-\tau L}` by a Chebyshev expansion.

:math:`L = I - D^{-1/2} A D^{-1/2}` is the symmetric normalised Laplacian
(Chung's convention: :math:`L_{vv} = 0` for an isolated node, whose heat stays
put). Its spectrum lies in :math:`[0, 2]`, so :math:`\tilde L = L - I` has
spectrum in :math:`[-1, 1]` and

.. math::
    e^{-\tau(x + 1)} = \sum_{k \ge 0} c_k T_k(x), \qquad
    c_0 = e^{-\tau} I_0(\tau), \quad c_k = 2 (-1)^k e^{-\tau} I_k(\tau),

with :math:`I_k` the modified Bessel function (scipy's ``ive`` is
:math:`e^{-\tau} I_k(\tau)`). Truncating at degree ``K`` leaves an error below
:math:`\sum_{k > K} |c_k| \approx 2 (\tau/2)^{K+1} / (K+1)!`.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import ive
from torch import Tensor


def heat_chebyshev_coefficients(tau: float | Sequence[float], K: int, *,
                                dtype: torch.dtype = torch.float64,
                                device: torch.device | str | None = None) -> Tensor:
    r"""Chebyshev coefficients of :math:`x \mapsto e^{-\tau (x + 1)}` on :math:`[-1, 1]`.

    Args:
        tau: one diffusion time or several, each finite and ``>= 0``.
        K: polynomial degree, ``>= 0``.
        dtype (torch.dtype): Default ``torch.float64``.
        device (torch.device or str, optional): Default: the CPU.

    Returns:
        ``(T, K + 1)`` tensor, one row per ``tau``.

    Example:
        >>> import math, torch
        >>> from glass_pyg.geometry import heat_chebyshev_coefficients
        >>> c = heat_chebyshev_coefficients(0.5, K=12)[0]                 # (number of taus, K + 1)
        >>> x = torch.tensor(0.3, dtype=torch.float64)
        >>> T = [torch.ones(()), x]
        >>> for _ in range(11): T.append(2 * x * T[-1] - T[-2])
        >>> abs(float(sum(ck * Tk for ck, Tk in zip(c, T))) - math.exp(-0.5 * 1.3)) < 1e-12
        True
    """
    taus = [tau] if isinstance(tau, (int, float)) else list(tau)
    if not taus:
        raise ValueError("tau must hold at least one diffusion time")
    for v in taus:
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"tau must be finite and >= 0, got {v!r}")
    if not isinstance(K, int) or isinstance(K, bool) or K < 0:
        raise ValueError(f"K (the Chebyshev degree) must be an integer >= 0, got {K!r}")
    k = np.arange(K + 1)
    tau_arr = np.asarray(taus, dtype=np.float64)[:, None]
    c = 2.0 * ((-1.0) ** k) * ive(k, tau_arr)
    c[:, 0] *= 0.5
    return torch.as_tensor(c, dtype=dtype, device=device)


def sym_norm_operator(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r"""Edge weights of :math:`\tilde L = -D^{-1/2} A D^{-1/2} - \mathrm{diag}(\mathbb 1_{\deg = 0})`.

    ``edge_index`` holds edges ``source -> target`` (PyG's flow); degrees are
    summed at the target. The graph is taken as given: an undirected graph
    must list each edge in both directions.

    Returns:
        ``(norm, isolated)``: ``(E,)`` off-diagonal weights of :math:`\tilde L`
        and a ``(num_nodes,)`` bool mask of nodes of zero degree (their
        diagonal entry of :math:`\tilde L` is ``-1``).

    Args:
        edge_index (Tensor): ``(2, E)`` edges ``source -> target``.
        edge_weight (Tensor, optional): ``(E,)`` positive weights (``None``: all 1).
        num_nodes (int): :math:`N`.
        dtype (torch.dtype): of the weights returned.

    Example:
        >>> import torch
        >>> from glass_pyg.geometry import sym_norm_operator
        >>> edge_index = torch.tensor([[0, 1], [1, 0]])
        >>> weight, isolated = sym_norm_operator(edge_index, None, 2, torch.float64)
        >>> weight, isolated                                               # -1 / sqrt(d_i d_j) per edge
        (tensor([-1., -1.], dtype=torch.float64), tensor([False, False]))
    """
    src, dst = edge_index[0], edge_index[1]
    w = (torch.ones(src.numel(), dtype=dtype, device=src.device) if edge_weight is None
         else edge_weight.to(dtype))
    deg = weighted_degree(edge_index, w, num_nodes, dtype)
    isolated = deg <= 0
    inv_sqrt = torch.where(isolated, torch.zeros_like(deg), deg.clamp_min(torch.finfo(dtype).tiny).rsqrt())
    return -inv_sqrt[src] * w * inv_sqrt[dst], isolated


def weighted_degree(edge_index: Tensor, edge_weight: Tensor | None, num_nodes: int,
                    dtype: torch.dtype) -> Tensor:
    """Sum of the weights of the edges arriving at each node, ``(num_nodes,)``."""
    w = (torch.ones(edge_index.size(1), dtype=dtype, device=edge_index.device) if edge_weight is None
         else edge_weight.to(dtype))
    return torch.zeros(num_nodes, dtype=dtype, device=edge_index.device).index_add_(0, edge_index[1], w)
