import pytest
import torch

from glass_pyg import losses, metrics
from glass_pyg.datasets import SBMPairDataset
from glass_pyg.nn import GLASS, DiffusionFeatures, GraphProjection
from glass_pyg.ot import SolverOptions


def features(pair, dim=16):
    feat = DiffusionFeatures(dim, 0.5, 12)
    n_s, n_t = pair.x_s.size(0), pair.x_t.size(0)
    return (feat(None, pair.edge_index_s, num_nodes=n_s, dtype=torch.float64),
            feat(None, pair.edge_index_t, num_nodes=n_t, dtype=torch.float64))


def head(dim, slices=2, **kw):
    proj = GraphProjection(dim, slices).double()
    proj.reset_parameters(torch.Generator().manual_seed(0))
    return GLASS(proj, **kw)


@pytest.fixture(scope="module")
def small_pair():
    return SBMPairDataset(n=60, p_in=0.3, p_out=0.05, rewire_prob=0.05, seed=1)[0]


def test_loss_is_the_dense_lifted_cost(small_pair):
    psi_s, psi_t = features(small_pair)
    model = head(16, gamma=0.2)
    out = model(psi_s, psi_t)
    D = torch.cdist(psi_s, psi_t) ** 2
    dense = torch.stack([(P * D).sum() for P in out.plans[0].to_dense()]).mean()
    torch.testing.assert_close(out.loss, dense)
    assert "plan" not in vars(out)  # formed on first access only
    torch.testing.assert_close(out.plan.to_dense(), out.plans[0].to_dense().mean(0))
    P = out.plans[0].to_dense().mean(0).detach()
    assert out.plan_entropy == pytest.approx(float(-torch.special.xlogy(P, P).sum()), rel=1e-12)
    assert out.plan.shape == (60, 60) and out.nnz == out.plans[0].nnz and out.converged
    torch.testing.assert_close(losses.lifted_loss_graph(out.plans[0], psi_s, psi_t), out.loss)


def test_dense_solver_agrees(small_pair):
    psi_s, psi_t = features(small_pair)
    for temperature, gamma in (("absolute", 0.2), ("rank", 6.0)):
        a = head(16, gamma=gamma, temperature=temperature)(psi_s, psi_t)
        b = head(16, gamma=gamma, temperature=temperature, solver="dense", max_iter=5000, tol=1e-8)(psi_s, psi_t)
        torch.testing.assert_close(a.loss, b.loss, rtol=1e-4, atol=1e-6)


def test_gradient_matches_finite_differences(small_pair):
    psi_s, psi_t = features(small_pair, dim=6)
    psi_s, psi_t = psi_s[:25], psi_t[:25]
    model = head(6, gamma=0.3, tol=1e-12, max_iter=2000)

    def loss(w):
        model.projection.weight.data.copy_(w)
        return model(psi_s, psi_t).loss

    w0 = model.projection.weight.detach().clone()
    model.projection.weight.grad = None
    model(psi_s, psi_t).loss.backward()
    grad = model.projection.weight.grad.clone()
    eps = 1e-6
    for idx in [(0, 0), (0, 3), (1, 5)]:
        wp, wm = w0.clone(), w0.clone()
        wp[idx] += eps
        wm[idx] -= eps
        with torch.no_grad():
            fd = (loss(wp) - loss(wm)) / (2 * eps)
        assert abs(float(fd) - float(grad[idx])) < 1e-5 * max(1.0, abs(float(fd)))


def test_minibatch_solves_each_pair_on_its_own():
    from torch_geometric.loader import DataLoader
    ds = SBMPairDataset(n=40, p_in=0.3, rewire_prob=0.05, num_pairs=2, seed=3)
    batch = next(iter(DataLoader(ds, batch_size=2, follow_batch=["x_s", "x_t"])))
    feat = DiffusionFeatures(8, 0.5, 12)
    psi_s = feat(None, batch.edge_index_s, num_nodes=80, batch=batch.x_s_batch, dtype=torch.float64)
    psi_t = feat(None, batch.edge_index_t, num_nodes=80, batch=batch.x_t_batch, dtype=torch.float64)
    model = head(8, gamma=0.2)
    out = model(psi_s, psi_t, batch.x_s_batch, batch.x_t_batch)
    singles = [model(psi_s[40 * k:40 * (k + 1)], psi_t[40 * k:40 * (k + 1)]) for k in range(2)]
    torch.testing.assert_close(out.loss, (singles[0].loss + singles[1].loss) / 2)
    dense = out.plan.to_dense()
    for k in range(2):
        torch.testing.assert_close(dense[40 * k:40 * (k + 1), 40 * k:40 * (k + 1)], singles[k].plan.to_dense())
    assert float(dense[:40, 40:].abs().sum().detach()) == 0.0
    assert out.plan_entropy == pytest.approx((singles[0].plan_entropy + singles[1].plan_entropy) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="batch_s"):
        model(psi_s, psi_t, batch.x_s_batch[:-1], batch.x_t_batch)


def test_bad_options():
    proj = GraphProjection(4, 2)
    with pytest.raises(ValueError, match="cost"):
        GLASS(proj, cost="manhattan")
    with pytest.raises(ValueError, match="solver"):
        GLASS(proj, solver="exact")
    with pytest.raises(ValueError, match="gamma"):
        GLASS(proj, gamma=0.0)
    with pytest.raises(ValueError, match="not both"):
        GLASS(proj, options=SolverOptions(), gamma=1.0)
    with pytest.raises(TypeError, match="gama"):
        GLASS(proj, gama=1.0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(gamma=-1.0), "gamma"), (dict(gamma=True), "gamma"), (dict(temperature="hot"), "temperature"),
    (dict(grad="finite"), "grad"), (dict(method="lbfgs"), "method"), (dict(max_iter=1.5), "max_iter"),
    (dict(tol=0.0), "tol"), (dict(band_eps=1.0), "band_eps")])
def test_solver_options_name_the_bad_option(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SolverOptions(**kwargs)


def test_options_object_and_keywords_are_one_definition(gen):
    # the head with an options object solves exactly as with the same keywords, and as the solver called directly
    x = torch.randn(60, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    proj = GraphProjection(4, 2).double()
    opts = SolverOptions(gamma=0.5, temperature="rank", tol=1e-9)
    a = GLASS(proj, options=opts)(x, y)
    b = GLASS(proj, gamma=0.5, temperature="rank", tol=1e-9)(x, y)
    assert torch.equal(a.loss, b.loss)
    with torch.no_grad():
        direct = opts(proj(x).t(), proj(y).t())
    torch.testing.assert_close(a.plans[0].values, direct.values)
    assert opts.as_dict()["temperature"] == "rank" and repr(GLASS(proj, options=opts)) == repr(
        GLASS(proj, gamma=0.5, temperature="rank"))


def test_training_recovers_the_permutation():
    pair = SBMPairDataset(n=200, rewire_prob=0.0, seed=0)[0]
    psi_s, psi_t = features(pair, dim=32)
    model = head(32, gamma=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gamma, first = 0.1, None
    for _ in range(40):
        out = model(psi_s, psi_t, gamma=gamma)
        first = out.loss.item() if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        gamma = max(gamma * 0.98, 0.01)
    out = model(psi_s, psi_t, gamma=gamma)
    assert out.loss.item() < 0.8 * first
    assert metrics.perm_accuracy(out.plan, pair.y, "hungarian") == 1.0
    cost = losses.squared_euclidean(psi_s, psi_t)
    assert metrics.perm_accuracy(out.plan, pair.y, "hungarian", cost=cost) == 1.0
    assert metrics.perm_accuracy(out.plan, pair.y, "argmax") >= 0.9
    assert metrics.hits_at_k(out.plan, pair.y, 5) == 1.0


def test_warm_starts_back_off_while_refused(small_pair, monkeypatch):
    """Offered warm starts that the solver refuses are offered again after 1, 3, 7, ... cold
    solves; accepted ones every solve; the refusal count travels with the warm state."""
    import glass_pyg.nn.glass as glass_module
    offered = []
    solve = glass_module.sinkhorn_banded

    def spy(*args, init=None, **kw):
        offered.append(init is not None)
        return solve(*args, init=init, **kw)

    monkeypatch.setattr(glass_module, "sinkhorn_banded", spy)
    psi_s, psi_t = features(small_pair)
    same = head(16, gamma=0.2, warm_start=True)
    for _ in range(4):
        plan = same(psi_s, psi_t).plans[0]
    assert offered == [False, True, True, True] and bool(plan.warm_started.all()) and plan.iterations == 0
    offered.clear()
    moving = head(16, gamma=0.2, warm_start=True)
    g = torch.Generator().manual_seed(3)
    # each call's targets are another random rotation of the features: the last potentials are junk
    inputs = [psi_t @ torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64))[0] * 5
              for _ in range(9)]
    for x_t in inputs[:5]:
        assert not bool(moving(psi_s, x_t).plans[0].warm_started.any())
    resumed = head(16, gamma=0.2, warm_start=True)
    resumed.load_warm_state(moving.warm_state())
    for x_t in inputs[5:]:
        resumed(psi_s, x_t)
    # refused at calls 1 and 3, so calls 2 and 4-6 start cold; the resumed head keeps the count
    assert offered == [False, True, False, True, False, False, False, True, False]
    legacy = head(16, gamma=0.2, warm_start=True)
    legacy.load_warm_state({k: v[:2] for k, v in moving.warm_state().items()})  # the older [f, g] form
    offered.clear()
    legacy(psi_s, inputs[0])
    assert offered == [True]
