import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from glass_pyg import losses, metrics
from glass_pyg.datasets import SpherePairDataset
from glass_pyg.geometry import geodesic_distance, pairwise_geodesic_distance, rotation_angle
from glass_pyg.nn import GLASS, LearnedRotation, SphereProjection


def test_dataset_pairs_are_noisy_rotated_relabellings():
    ds = SpherePairDataset(n=300, noise_deg=2.0, rotation=True, max_rotation_deg=40, num_pairs=2, seed=1)
    d = ds[0]
    R = d.rotation[0].double()
    ps, pt = d.pos_s.double(), d.pos_t.double()
    torch.testing.assert_close(ps.norm(dim=1), torch.ones(300, dtype=torch.float64))
    back = pt[d.y[1]] @ R  # undo the rotation: source + tangent noise
    err = torch.rad2deg(geodesic_distance(back, ps))
    # a 2-D tangent Gaussian of 2 deg per axis: the displacement is Rayleigh, mean 2 * sqrt(pi / 2)
    assert abs(float(err.mean()) - 2 * math.sqrt(math.pi / 2)) < 0.3
    assert float(torch.rad2deg(rotation_angle(R))) <= 40 + 1e-4
    assert not torch.equal(ds[0].pos_s, ds[1].pos_s)
    same = SpherePairDataset(n=300, noise_deg=2.0, rotation=True, max_rotation_deg=40, num_pairs=1, seed=1)
    assert torch.equal(same[0].pos_t, d.pos_t)


def test_vmf_mixture_is_concentrated():
    d = SpherePairDataset(n=2000, noise_deg=0.0, distribution="vmf", num_clusters=1, kappa=50.0, seed=0)[0]
    mean = d.pos_s.double().mean(0)
    # for a vMF law on S^2, E[mu . x] = coth(kappa) - 1 / kappa
    assert abs(float(mean.norm()) - (1 / math.tanh(50.0) - 1 / 50.0)) < 0.01
    torch.testing.assert_close(d.pos_t[d.y[1]], d.pos_s)  # no noise, no rotation


@pytest.mark.parametrize("kwargs, name", [
    (dict(n=0), "n"), (dict(noise_deg=-1.0), "noise_deg"), (dict(max_rotation_deg=200.0), "max_rotation_deg"),
    (dict(distribution="gauss"), "distribution"), (dict(kappa=0.0), "kappa")])
def test_dataset_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SpherePairDataset(**kwargs)


def test_projection_constraints_hold_after_steps():
    proj = SphereProjection(K=6, slices=3, gate_mode="learn", generator=torch.Generator().manual_seed(0))
    x = torch.nn.functional.normalize(torch.randn(50, 3), dim=1)
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        proj(x).pow(2).sum().backward()
        opt.step()
    a, u = proj.anchors.detach(), proj.directions.detach()
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3, 6))
    assert float((a * u).sum(-1).abs().max()) < 1e-6
    assert proj.log_width.shape == (3, 6) and proj(x).shape == (50, 3)
    g = proj.gates(x)
    torch.testing.assert_close(g.sum(-1), torch.ones(50, 3))


def test_projection_modes_and_repr():
    fixed = SphereProjection(K=8, gate_mode="fixed")
    assert "log_width" not in dict(fixed.named_parameters())
    assert float(fixed.gate_width_deg) == pytest.approx(45 / math.sqrt(8))
    tie = SphereProjection(K=8, gate_mode="tie")
    assert dict(tie.named_parameters())["log_width"].shape == ()
    assert repr(tie) == ("SphereProjection(K=8, slices=2, chart_radius_deg=20, gate_mode='tie', "
                         "gate_c_per_sqrtk_deg=45, geometry='torch')")
    with pytest.raises(ValueError, match="gate_mode"):
        SphereProjection(gate_mode="soft")
    with pytest.raises(ValueError, match="chart_radius_deg"):
        SphereProjection(chart_radius_deg=-5)
    with pytest.raises(ValueError, match="space"):
        SphereProjection(space=object())


def test_geomstats_route_agrees():
    from glass_pyg.geometry.geomstats_backend import hypersphere
    gen = torch.Generator().manual_seed(0)
    a = SphereProjection(K=4, generator=gen).double()
    b = SphereProjection(K=4, space=hypersphere(), geometry="geomstats").double()
    b.load_state_dict(a.state_dict())
    x = torch.nn.functional.normalize(torch.randn(20, 3, dtype=torch.float64), dim=1)
    torch.testing.assert_close(a(x), b(x), atol=1e-9, rtol=0)


def test_learned_rotation_recovers_a_small_rotation():
    from glass_pyg.geometry import so3_exp
    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(100, 3, generator=gen, dtype=torch.float64), dim=1)
    R = so3_exp(torch.tensor([0.1, -0.2, 0.15], dtype=torch.float64))
    rot = LearnedRotation().double()
    opt = torch.optim.Adam(rot.parameters(), lr=0.05)
    for _ in range(200):
        opt.zero_grad()
        geodesic_distance(rot(x @ R.t()), x).pow(2).mean().backward()
        opt.step()
    torch.testing.assert_close(rot.matrix().detach() @ R, torch.eye(3, dtype=torch.float64), atol=1e-3, rtol=0)


def test_training_recovers_correspondences():
    d = SpherePairDataset(n=256, noise_deg=2.0, rotation=False, seed=0)[0]
    ps, pt = d.pos_s.double(), d.pos_t.double()
    proj = SphereProjection(K=8, slices=8, generator=torch.Generator().manual_seed(0)).double()
    head = GLASS(proj, cost="sq_geodesic", gamma=0.05)
    opt = torch.optim.Adam(proj.parameters(), lr=3e-2)
    first = None
    for _ in range(30):
        out = head(ps, pt)
        first = out.loss.item() if first is None else first
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    out = head(ps, pt)
    assert out.loss.item() < 0.7 * first
    _, col = linear_sum_assignment(pairwise_geodesic_distance(ps, pt).pow(2).numpy())
    lap = float((torch.as_tensor(col)[d.y[0]] == d.y[1]).double().mean())
    hungarian = metrics.perm_accuracy(out.plan, d.y, "hungarian")
    refined = metrics.perm_accuracy(out.plan, d.y, "hungarian", cost=losses.squared_geodesic(ps, pt))
    assert hungarian >= 0.9, (hungarian, lap)
    assert refined >= lap - 0.02
