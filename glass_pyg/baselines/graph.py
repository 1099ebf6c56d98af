r"""Graph matching methods people use, on the same inputs as glass-pyg.

Every matcher takes two ``[2, E]`` edge indices and the node counts and
returns a :class:`Matching`: the target of every source node and, where the
method has one, the ``(n, m)`` similarity it decoded (larger = more alike),
so hits@k can be measured on it. All of them decode with a linear assignment
that maximises similarity.

- :func:`grampa`: spectral similarity of Fan, Mao, Wu and Xu (2019),
  :math:`X = \sum_{ij} \frac{u_i u_i^\top J v_j v_j^\top}{(\lambda_i-\mu_j)^2+\eta^2}`
  on the centred, normalised adjacency matrices.
- :func:`umeyama`: Umeyama (1988), :math:`|U| |V|^\top` of the eigenvector
  matrices ordered by eigenvalue.
- :func:`degree_profile`: Ding, Ma, Wu and Xu (2021), Wasserstein-1 distance
  between the empirical distributions of the neighbours' degrees.
- :func:`faq`: scipy's ``quadratic_assignment(method="faq")``, maximising
  the number of matched edges, from its default (barycentre) start.
- :func:`entropic_gw`: POT's entropic Gromov-Wasserstein on the adjacency
  matrices, decoded by assignment on the plan.
- :func:`feature_lap`: assignment on the squared distance of node features.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .._optional import require


@dataclass
class Matching:
    """Output of a baseline matcher.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import Matching, adjacency, degree_profile
        >>> a = adjacency(np.array([[0, 1, 2], [1, 2, 3]]), 4)                  # a path 0-1-2-3
        >>> m = degree_profile(a, a)
        >>> isinstance(m, Matching), m.perm.shape
        (True, (4,))
    """

    perm: np.ndarray  #: ``(n,)`` target of every source node (``-1`` if unmatched)
    similarity: np.ndarray | None = None  #: ``(n, m)`` similarity that was decoded, if any
    iterations: int | None = None  #: iterations of an iterative method


def adjacency(edge_index: Tensor | np.ndarray, num_nodes: int) -> np.ndarray:
    """Dense symmetric 0/1 adjacency ``(N, N)`` of an edge index (self-loops dropped).

    Args:
        edge_index (Tensor or ndarray): ``(2, E)`` edges (either direction).
        num_nodes (int): :math:`N`.

    Returns:
        ndarray: ``(N, N)`` float64 0/1 matrix.

    Example:
        >>> import torch
        >>> from glass_pyg.baselines import adjacency
        >>> adjacency(torch.tensor([[0, 1, 1], [1, 2, 1]]), 3).astype(int).tolist()   # symmetrised, self-loop dropped
        [[0, 1, 0], [1, 0, 1], [0, 1, 0]]
    """
    ei = np.asarray(edge_index.detach().cpu() if isinstance(edge_index, Tensor) else edge_index)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {ei.shape}")
    if ei.size and (ei.min() < 0 or ei.max() >= num_nodes):
        raise ValueError(f"edge_index holds node indices outside [0, {num_nodes})")
    a = np.zeros((num_nodes, num_nodes))
    a[ei[0], ei[1]] = 1.0
    a = np.maximum(a, a.T)
    np.fill_diagonal(a, 0.0)
    return a


def assign(similarity: np.ndarray) -> np.ndarray:
    """Maximum-similarity one-to-one matching, ``(n,)`` (``-1`` for unmatched rows when n > m).

    Args:
        similarity (ndarray): ``(n, m)`` scores, larger is better.

    Returns:
        ndarray: ``(n,)`` int64 target per source.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import assign
        >>> assign(np.array([[0.1, 0.9], [0.8, 0.3]])).tolist()
        [1, 0]
    """
    rows, cols = linear_sum_assignment(similarity, maximize=True)
    perm = np.full(similarity.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return perm


def _centred(a: np.ndarray) -> np.ndarray:
    n = a.shape[0]
    p = a.sum() / max(n * (n - 1), 1)
    if not 0.0 < p < 1.0:
        return a.copy()
    c = a - p
    np.fill_diagonal(c, 0.0)
    return c / np.sqrt(n * p * (1.0 - p))


def grampa(a: np.ndarray, b: np.ndarray, eta: float = 0.2) -> Matching:
    r"""GRAMPA spectral matching of two dense adjacency matrices (``eta > 0``).

    Args:
        a (ndarray): ``(n, n)`` source adjacency.
        b (ndarray): ``(n, n)`` target adjacency.
        eta (float): GRAMPA's regularisation. Default ``0.2``.

    Returns:
        Matching: the assignment and the similarity matrix.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import adjacency, grampa
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(root=None, n=100, seed=0)[0]
        >>> m = grampa(adjacency(pair.edge_index_s, 100), adjacency(pair.edge_index_t, 100))
        >>> float((m.perm == pair.y[1].numpy()).mean())                        # an isomorphic pair
        1.0
    """
    if eta <= 0:
        raise ValueError(f"eta must be positive, got {eta}")
    lam, u = np.linalg.eigh(_centred(a))
    mu, v = np.linalg.eigh(_centred(b))
    w = 1.0 / ((lam[:, None] - mu[None, :]) ** 2 + eta ** 2)
    x = u @ (w * np.outer(u.sum(0), v.sum(0))) @ v.T
    return Matching(assign(x), x)


def umeyama(a: np.ndarray, b: np.ndarray) -> Matching:
    """Umeyama's eigenvector matching of two dense adjacency matrices of equal size.

    Args:
        a (ndarray): ``(n, n)`` source adjacency.
        b (ndarray): ``(n, n)`` target adjacency.

    Returns:
        Matching: the assignment and the similarity matrix.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import adjacency, umeyama
        >>> a = adjacency(np.array([[0, 1, 2, 0], [1, 2, 3, 2]]), 4)
        >>> umeyama(a, a).perm.shape
        (4,)
    """
    if a.shape != b.shape:
        raise ValueError(f"umeyama needs graphs of equal size, got {a.shape} and {b.shape}")
    _, u = np.linalg.eigh(a)
    _, v = np.linalg.eigh(b)
    x = np.abs(u) @ np.abs(v).T
    return Matching(assign(x), x)


def _profiles(a: np.ndarray, quantiles: int) -> np.ndarray:
    deg = a.sum(1)
    n = a.shape[0]
    q = (np.arange(quantiles) + 0.5) / quantiles
    out = np.zeros((n, quantiles))
    csr = sp.csr_matrix(a)
    for i in range(n):
        nb = deg[csr.indices[csr.indptr[i]:csr.indptr[i + 1]]]
        if nb.size:
            out[i] = np.quantile(nb, q, method="inverted_cdf")
    return out / np.sqrt(max(deg.mean(), 1.0))


def degree_profile(a: np.ndarray, b: np.ndarray, quantiles: int = 32) -> Matching:
    r"""Degree-profile matching: W1 between neighbour-degree distributions (on ``quantiles`` points).

    Args:
        a (ndarray): ``(n, n)`` source adjacency.
        b (ndarray): ``(m, m)`` target adjacency.
        quantiles (int): points of each neighbour-degree distribution. Default ``32``.

    Returns:
        Matching: the assignment and its similarity ``(n, m)``.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import adjacency, degree_profile
        >>> a = adjacency(np.array([[0, 0, 0, 1], [1, 2, 3, 4]]), 5)            # a star with a tail
        >>> int(degree_profile(a, a).perm[0])                                   # the centre maps to itself
        0
    """
    pa, pb = _profiles(a, quantiles), _profiles(b, quantiles)
    d = np.zeros((pa.shape[0], pb.shape[0]))
    for lo in range(0, pa.shape[0], 256):  # blocks keep the (rows, m, q) temporary small
        d[lo:lo + 256] = np.abs(pa[lo:lo + 256, None, :] - pb[None, :, :]).mean(-1)
    return Matching(assign(-d), -d)


def faq(a: np.ndarray, b: np.ndarray, seed: int = 0) -> Matching:
    """scipy's FAQ quadratic assignment, maximising matched edges, from the barycentre.

    Args:
        a (ndarray): ``(n, n)`` source adjacency.
        b (ndarray): ``(n, n)`` target adjacency.
        seed (int): of scipy's solver. Default ``0``.

    Returns:
        Matching: the permutation and the iterations.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import adjacency, faq
        >>> a = adjacency(np.array([[0, 1, 2], [1, 2, 3]]), 4)
        >>> sorted(faq(a, a).perm.tolist())
        [0, 1, 2, 3]
    """
    from scipy.optimize import quadratic_assignment
    res = quadratic_assignment(a, b, method="faq", options={"maximize": True, "rng": np.random.default_rng(seed)})
    return Matching(np.asarray(res.col_ind, dtype=np.int64), None, int(res.nit))


def entropic_gw(a: np.ndarray, b: np.ndarray, epsilon: float | None = None, max_iter: int = 1000,
                tol: float = 1e-9) -> Matching:
    r"""POT entropic Gromov-Wasserstein on the adjacency matrices.

    ``epsilon`` defaults to ``0.25 * density(a) * density(b)``, the scale of
    the square loss between two adjacency matrices.

    Args:
        a (ndarray): ``(n, n)`` source adjacency.
        b (ndarray): ``(m, m)`` target adjacency.
        epsilon (float, optional): entropic regularisation. Default: as above.
        max_iter (int): outer iterations of POT. Default ``1000``.
        tol (float): POT's stopping tolerance. Default ``1e-9``.

    Returns:
        Matching: the assignment of the plan and the plan as ``similarity``.

    Raises:
        ImportError: when POT is missing (the ``bench`` extra installs it).

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import adjacency, entropic_gw
        >>> from glass_pyg.datasets import SBMPairDataset
        >>> pair = SBMPairDataset(root=None, n=100, seed=0)[0]
        >>> m = entropic_gw(adjacency(pair.edge_index_s, 100), adjacency(pair.edge_index_t, 100))   # needs POT
        >>> float((m.perm == pair.y[1].numpy()).mean())
        1.0
    """
    ot = require("ot", "the entropic GW baseline")
    n, m = a.shape[0], b.shape[0]
    if epsilon is None:
        da = a.sum() / max(n * (n - 1), 1)
        db = b.sum() / max(m * (m - 1), 1)
        epsilon = 0.25 * da * db
    if epsilon <= 0:
        raise ValueError(f"epsilon must be positive, got {epsilon} (is one graph empty?)")
    p, q = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    plan = ot.gromov.entropic_gromov_wasserstein(a, b, p, q, "square_loss", epsilon=epsilon,
                                                 max_iter=max_iter, tol=tol)
    plan = np.asarray(plan)
    if not np.isfinite(plan).all():
        raise FloatingPointError("entropic GW returned a non-finite plan")
    return Matching(assign(plan), plan)


def feature_lap(x_s: np.ndarray, x_t: np.ndarray) -> Matching:
    """Assignment on the squared Euclidean distance of node features ``(n, d)``, ``(m, d)``.

    Args:
        x_s (ndarray): ``(n, d)`` source features.
        x_t (ndarray): ``(m, d)`` target features.

    Returns:
        Matching: the assignment and minus the squared distances as ``similarity``.

    Example:
        >>> import numpy as np
        >>> from glass_pyg.baselines import feature_lap
        >>> x = np.random.default_rng(0).normal(size=(6, 3))
        >>> feature_lap(x, x[[2, 0, 1, 5, 3, 4]]).perm.tolist()
        [1, 2, 0, 4, 5, 3]
    """
    d = (x_s ** 2).sum(1)[:, None] + (x_t ** 2).sum(1)[None, :] - 2.0 * x_s @ x_t.T
    return Matching(assign(-d), -d)
