import numpy as np
import pytest

from glass_pyg import baselines as B
from glass_pyg.datasets import SBMPairDataset, SpherePairDataset


def _graphs(n=120, r=0.0, seed=0):
    d = SBMPairDataset(n=n, p_in=0.3, p_out=0.05, rewire_prob=r, seed=seed)[0]
    truth = np.empty(n, dtype=np.int64)
    truth[d.y[0].numpy()] = d.y[1].numpy()
    return B.adjacency(d.edge_index_s, n), B.adjacency(d.edge_index_t, n), truth


@pytest.mark.parametrize("name", ["grampa", "umeyama", "degree_profile", "faq", "entropic_gw"])
def test_isomorphic_pair_is_recovered(name):
    a, b, truth = _graphs()
    m = getattr(B, name)(a, b)
    assert m.perm.shape == (120,)
    assert (m.perm == truth).mean() == 1.0
    # the matching maps edges onto edges
    assert np.array_equal(a, b[np.ix_(m.perm, m.perm)])


def test_grampa_similarity_matches_the_double_sum():
    rng = np.random.default_rng(0)
    a = np.triu((rng.random((7, 7)) < 0.4).astype(float), 1)
    a = a + a.T
    b = a[np.ix_(rng.permutation(7), rng.permutation(7))]
    b = np.maximum(b, b.T)
    np.fill_diagonal(b, 0)
    eta = 0.3
    ca, cb = B.graph._centred(a), B.graph._centred(b)
    lam, u = np.linalg.eigh(ca)
    mu, v = np.linalg.eigh(cb)
    J = np.ones((7, 7))
    ref = sum(np.outer(u[:, i], u[:, i]) @ J @ np.outer(v[:, j], v[:, j]) / ((lam[i] - mu[j]) ** 2 + eta ** 2)
              for i in range(7) for j in range(7))
    np.testing.assert_allclose(B.grampa(a, b, eta).similarity, ref, atol=1e-10)


def test_feature_lap_and_errors():
    x = np.random.default_rng(1).normal(size=(30, 4))
    perm = np.random.default_rng(2).permutation(30)
    y = np.empty_like(x)
    y[perm] = x
    assert np.array_equal(B.feature_lap(x, y).perm, perm)
    with pytest.raises(ValueError, match="edge_index"):
        B.adjacency(np.zeros((3, 4), dtype=int), 5)
    with pytest.raises(ValueError, match="outside"):
        B.adjacency(np.array([[0, 9], [1, 2]]), 5)
    with pytest.raises(ValueError, match="eta"):
        B.grampa(np.zeros((3, 3)), np.zeros((3, 3)), eta=0)
    with pytest.raises(ValueError, match="equal size"):
        B.umeyama(np.zeros((3, 3)), np.zeros((4, 4)))


def test_sphere_baselines():
    d = SpherePairDataset(n=80, noise_deg=0.5, rotation=True, seed=0)[0]
    truth = np.empty(80, dtype=np.int64)
    truth[d.y[0].numpy()] = d.y[1].numpy()
    # undo the rotation: then assignment on the geodesic cost is (near) exact
    back = d.pos_t.double() @ d.rotation[0].double()
    assert (B.geodesic_lap(d.pos_s, back).perm == truth).mean() > 0.95
    # Gromov-Wasserstein sees only distances, so the rotation does not matter
    assert (B.sphere_gw(d.pos_s, d.pos_t).perm == truth).mean() > 0.9
