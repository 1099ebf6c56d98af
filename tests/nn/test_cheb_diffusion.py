import math

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.csgraph as csgraph
import torch

from glass_pyg.geometry import heat_chebyshev_coefficients
from glass_pyg.nn import ChebDiffusion


def random_graph(n, p, gen, isolated=(), weighted=False):
    A = (torch.rand(n, n, generator=gen, dtype=torch.float64) < p).double().triu(1)
    if weighted:
        A = A * torch.rand(n, n, generator=gen, dtype=torch.float64).mul(2).add(0.1)
    A = A + A.T
    for v in isolated:
        A[v, :] = 0
        A[:, v] = 0
    return A


def two_components(gen):
    A = torch.zeros(11, 11, dtype=torch.float64)
    A[:6, :6] = random_graph(6, 0.7, gen)
    A[6:10, 6:10] = random_graph(4, 0.9, gen)  # node 10 isolated
    return A


def laplacian(A):
    """Chung's normalised Laplacian, built by hand (L_vv = 0 for isolated v)."""
    deg = A.sum(1)
    inv = torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))
    return torch.diag((deg > 0).double()) - inv[:, None] * A * inv[None, :]


def dense_to_edges(A):
    idx = A.nonzero().T
    return idx, A[idx[0], idx[1]]


GRAPHS = {
    "er": lambda g: random_graph(15, 0.3, g),
    "isolated": lambda g: random_graph(12, 0.35, g, isolated=(0, 7)),
    "components": two_components,
    "weighted": lambda g: random_graph(10, 0.5, g, weighted=True),
}


def test_hand_laplacian_matches_scipy(gen):
    for make in GRAPHS.values():
        A = make(gen)
        ref = csgraph.laplacian(A.numpy(), normed=True)
        np.testing.assert_allclose(laplacian(A).numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_heat_kernel_matches_expm(name, tau, gen):
    A = GRAPHS[name](gen)
    n = A.shape[0]
    ei, w = dense_to_edges(A)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    ref = torch.from_numpy(scipy.linalg.expm(-tau * laplacian(A).numpy())) @ x
    errors = []
    for K in (2, 5, 10, 20):
        out = ChebDiffusion(tau, K)(x, ei, w)
        errors.append(float((out - ref).abs().max()))
    assert all(e1 <= e0 * 1.01 + 1e-15 for e0, e1 in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6
    assert errors[0] > errors[-1]  # K = 2 is visibly worse: the test can fail


def test_truncation_bound(gen):
    A = random_graph(14, 0.4, gen)
    ei, _ = dense_to_edges(A)
    x = torch.randn(14, 1, generator=gen, dtype=torch.float64)
    tau = 2.0
    ref = torch.from_numpy(scipy.linalg.expm(-tau * laplacian(A).numpy())) @ x
    for K in (3, 6, 9):
        err = float((ChebDiffusion(tau, K)(x, ei) - ref).norm() / x.norm())
        bound = 2 * sum((tau / 2) ** k / math.factorial(k) for k in range(K + 1, K + 30)) * math.exp(tau / 2)
        assert err <= bound


def test_coefficients_closed_form():
    from scipy.special import iv
    c = heat_chebyshev_coefficients([0.3, 1.5], 14)
    for r, tau in enumerate([0.3, 1.5]):
        xs = np.cos(np.linspace(0, np.pi, 9))
        series = sum(float(c[r, k]) * np.cos(k * np.arccos(xs)) for k in range(15))
        np.testing.assert_allclose(series, np.exp(-tau * (xs + 1)), atol=1e-12)
        assert abs(float(c[r, 1]) - (-2 * np.exp(-tau) * iv(1, tau))) < 1e-14


def test_multi_tau_concatenates(gen):
    A = random_graph(10, 0.4, gen)
    ei, _ = dense_to_edges(A)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    out = ChebDiffusion([0.2, 0.7], 15)(x, ei)
    assert out.shape == (10, 4)
    torch.testing.assert_close(out[:, :2], ChebDiffusion(0.2, 15)(x, ei))
    torch.testing.assert_close(out[:, 2:], ChebDiffusion(0.7, 15)(x, ei))


def test_sparse_inputs_agree(gen):
    A = random_graph(13, 0.3, gen, isolated=(4,), weighted=True)
    ei, w = dense_to_edges(A)
    x = torch.randn(13, 3, generator=gen, dtype=torch.float64)
    conv = ChebDiffusion(0.5, 12)
    ref = conv(x, ei, w)
    torch.testing.assert_close(conv(x, A.T.to_sparse()), ref)
    torch.testing.assert_close(conv(x, A.T.to_sparse_csr()), ref)


def test_sparsetensor_input(gen):
    torch_sparse = pytest.importorskip("torch_sparse")
    A = random_graph(13, 0.3, gen, isolated=(4,), weighted=True)
    ei, w = dense_to_edges(A)
    x = torch.randn(13, 3, generator=gen, dtype=torch.float64)
    conv = ChebDiffusion(0.5, 12)
    adj_t = torch_sparse.SparseTensor(row=ei[1], col=ei[0], value=w, sparse_sizes=(13, 13))
    torch.testing.assert_close(conv(x, adj_t), conv(x, ei, w))


def test_float32_and_gradcheck(gen):
    A = random_graph(8, 0.5, gen)
    ei, _ = dense_to_edges(A)
    x = torch.randn(8, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    conv = ChebDiffusion(0.5, 8)
    assert torch.autograd.gradcheck(lambda v: conv(v, ei), (x,))
    out32 = conv(x.detach().float(), ei)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), conv(x.detach(), ei), atol=1e-5, rtol=1e-5)


def test_repr_and_reset():
    conv = ChebDiffusion(0.5, 12)
    assert repr(conv) == "ChebDiffusion(tau=0.5, K=12)"
    assert repr(ChebDiffusion([0.2, 1.0], 4)) == "ChebDiffusion(tau=[0.2, 1.0], K=4)"
    before = conv.coeffs.clone()
    conv.coeffs.zero_()
    conv.reset_parameters()
    torch.testing.assert_close(conv.coeffs, before)


@pytest.mark.parametrize("kwargs, match", [
    (dict(tau=-0.1), "tau"), (dict(tau=float("nan")), "tau"), (dict(K=-1), "K"), (dict(K=2.5), "K")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChebDiffusion(**kwargs)


def test_bad_inputs(gen):
    conv = ChebDiffusion(0.5, 4)
    x = torch.randn(5, 2)
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="edge_index"):
        conv(x, ei.t().contiguous().view(4, 1))
    with pytest.raises(ValueError, match="outside"):
        conv(x, torch.tensor([[0, 7], [7, 0]]))
    with pytest.raises(ValueError, match="edge weights"):
        conv(x, ei, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="edge_weight"):
        conv(x, ei, torch.ones(3))
    with pytest.raises(ValueError, match="x must"):
        conv(torch.ones(5, 2, dtype=torch.long), ei)
    with pytest.raises(ValueError, match="sparse adjacency"):
        conv(x, torch.eye(4).to_sparse())


def test_torch_compile(gen):
    A = random_graph(20, 0.3, gen).float()
    ei, w = dense_to_edges(A)
    x = torch.randn(20, 3, generator=gen)
    conv = ChebDiffusion(0.5, 10)
    compiled = torch.compile(conv)
    torch.testing.assert_close(compiled(x, ei, w), conv(x, ei, w), atol=1e-5, rtol=1e-5)


def directed_graph(n, p, gen):
    """A weighted directed graph with one-way edges, ``A[target, source]`` (no duplicates)."""
    A = (torch.rand(n, n, generator=gen, dtype=torch.float64) < p).double()
    A.fill_diagonal_(0)
    return A * torch.rand(n, n, generator=gen, dtype=torch.float64).add(0.2)


def test_directed_graphs_are_symmetrised_and_the_bound_holds(gen):
    n, tau = 14, 3.0
    A = directed_graph(n, 0.25, gen)  # A[target, source]
    assert not torch.equal(A, A.T)
    idx = A.nonzero().T
    ei, w = idx.flip(0), A[idx[0], idx[1]]  # source -> target
    x = torch.randn(n, 2, generator=gen, dtype=torch.float64)
    S = 0.5 * (A + A.T)
    ref = torch.from_numpy(scipy.linalg.expm(-tau * laplacian(S).numpy())) @ x
    K = 20
    out = ChebDiffusion(tau, K)(x, ei, w)
    bound = 2 * sum((tau / 2) ** k / math.factorial(k) for k in range(K + 1, K + 30)) * math.exp(tau / 2)
    assert float((out - ref).norm() / x.norm()) <= bound
    conv = ChebDiffusion(tau, K)
    for adj_t in (A.to_sparse(), A.to_sparse_csr(), A.to_sparse_csc()):
        torch.testing.assert_close(conv(x, adj_t), out)


def test_pyg_assert_module_directed_and_undirected(gen):
    from torch_geometric.testing import assert_module
    from torch_geometric.utils import coalesce
    x = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    und, _ = dense_to_edges(random_graph(12, 0.35, gen))
    directed = coalesce(directed_graph(12, 0.25, gen).nonzero().T.flip(0))
    for ei in (und, directed):
        assert_module(ChebDiffusion(1.0, 12), x, ei, expected_size=(12, 3))


def test_uncoalesced_coo_is_read_as_summed_and_left_untouched(gen):
    A = random_graph(10, 0.4, gen, weighted=True)
    ei, w = dense_to_edges(A)
    x = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    conv = ChebDiffusion(0.7, 12)
    ref = conv(x, ei, w)
    # each weight split into two entries, listed in reverse order: the same matrix, uncoalesced
    order = torch.arange(ei.size(1) - 1, -1, -1)
    idx = torch.cat([ei[:, order], ei], 1).flip(0)
    val = torch.cat([0.25 * w[order], 0.75 * w])
    adj_t = torch.sparse_coo_tensor(idx, val, (10, 10))
    assert not adj_t.is_coalesced()
    torch.testing.assert_close(conv(x, adj_t), ref)
    assert not adj_t.is_coalesced()  # the caller's tensor is not marked coalesced
