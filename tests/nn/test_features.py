import pytest
import torch
from torch_geometric.utils import to_undirected

from glass_pyg.datasets import SBMPairDataset
from glass_pyg.nn import DiffusionFeatures, GraphProjection


@pytest.fixture(scope="module")
def pair():
    return SBMPairDataset(n=120, p_in=0.2, p_out=0.03, rewire_prob=0.0, seed=3)[0]


def test_equivariant_under_relabelling(pair):
    feat = DiffusionFeatures(24, 0.5, 12)
    psi_s = feat(None, pair.edge_index_s, num_nodes=120, dtype=torch.float64)
    psi_t = feat(None, pair.edge_index_t, num_nodes=120, dtype=torch.float64)
    # the target is the source relabelled by y[1]: rows must follow exactly (up to summation order)
    torch.testing.assert_close(psi_t[pair.y[1]], psi_s, atol=1e-10, rtol=0)


def test_standardised_and_deflated(pair):
    feat = DiffusionFeatures(16, [0.3, 1.0], 12)
    psi = feat(None, pair.edge_index_s, num_nodes=120, dtype=torch.float64)
    assert psi.shape == (120, 16) and torch.isfinite(psi).all()
    torch.testing.assert_close(psi.mean(0), torch.zeros(16, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(psi.std(0, unbiased=False), torch.ones(16, dtype=torch.float64))
    assert repr(feat) == "DiffusionFeatures(feat_dim=16, tau=[0.3, 1.0], K=12)"


def test_isolated_nodes_and_batches(gen):
    ei1 = to_undirected(torch.tensor([[0, 1, 2, 2], [1, 2, 3, 4]]))  # node 5 isolated
    ei2 = to_undirected(torch.tensor([[0, 0, 1, 3], [1, 2, 2, 4]]))  # a triangle and an edge
    feat = DiffusionFeatures(10, 0.5, 10)
    a = feat(None, ei1, num_nodes=6, dtype=torch.float64)
    b = feat(None, ei2, num_nodes=5, dtype=torch.float64)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    both = feat(None, torch.cat([ei1, ei2 + 6], 1), num_nodes=11, dtype=torch.float64,
                batch=torch.tensor([0] * 6 + [1] * 5))
    torch.testing.assert_close(both, torch.cat([a, b]), atol=1e-12, rtol=0)


def test_node_features_enter(pair):
    feat = DiffusionFeatures(12, 0.5, 12)
    x = torch.randn(120, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    plain = feat(pair.x_s.double(), pair.edge_index_s)  # the constant feature carries nothing
    torch.testing.assert_close(plain, feat(None, pair.edge_index_s, num_nodes=120, dtype=torch.float64))
    assert not torch.allclose(feat(x, pair.edge_index_s), plain)


def test_regular_graph_without_features_is_an_error():
    ring = to_undirected(torch.stack([torch.arange(8), (torch.arange(8) + 1) % 8]))
    with pytest.raises(ValueError, match="regular graph"):
        DiffusionFeatures(8)(None, ring, num_nodes=8)
    with pytest.raises(ValueError, match="num_nodes"):
        DiffusionFeatures(8)(None, ring)


def test_projection_shapes_and_norm():
    proj = GraphProjection(6, slices=3)
    proj.reset_parameters(torch.Generator().manual_seed(0))
    torch.testing.assert_close(proj.directions().norm(dim=1), torch.ones(3))
    assert proj(torch.randn(5, 6)).shape == (5, 3)
    with pytest.raises(ValueError, match="psi"):
        proj(torch.randn(5, 4))
    assert repr(proj) == "GraphProjection(6, slices=3, normalize=True)"
