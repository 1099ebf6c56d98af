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


def test_projection_equals_the_chart_formula_with_log_maps_and_its_gradient():
    # the layer computes <rho_R(Log_a x), u> from inner products; here from explicit log maps (N, L, K, 3)
    from glass_pyg.geometry.sphere import log_map, normalize, project_tangent
    proj = SphereProjection(K=8, slices=3, gate_mode="learn", generator=torch.Generator().manual_seed(0)).double()
    a = proj.anchors.detach().reshape(-1, 3)
    g = torch.Generator().manual_seed(1)
    x = torch.cat([normalize(torch.randn(300, 3, generator=g, dtype=torch.float64)), a[:4], -a[4:8],
                   normalize(a[8:12] + 1e-9 * torch.randn(4, 3, generator=g, dtype=torch.float64))])

    def by_log_maps(x):
        v = log_map(x.view(-1, 1, 1, 3), proj.anchors)
        R = math.radians(proj.chart_radius_deg)
        norm = v.norm(dim=-1, keepdim=True)
        squash = torch.where(norm > 1e-12, R * torch.tanh(norm / R) / norm.clamp_min(1e-12), torch.ones_like(norm))
        return (proj.gates(x) * (squash * v * proj.directions).sum(-1)).sum(-1)

    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = proj(xa), by_log_maps(xb)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    ga = torch.autograd.grad((got * w).sum(), [xa, *proj.parameters()])
    gb = torch.autograd.grad((want * w).sum(), [xb, *proj.parameters()])
    # on the sphere only the tangential part of the points' gradient is defined
    torch.testing.assert_close(project_tangent(ga[0], x), project_tangent(gb[0], x), atol=1e-12, rtol=0)
    for p, q in zip(ga[1:], gb[1:]):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=1e-10)


def test_projection_in_row_blocks_gives_the_one_block_values_and_gradients(monkeypatch):
    # the torch route (accelerators, no compiler): row blocks recomputed in the backward
    import glass_pyg.ot._row_blocks as blocks
    from glass_pyg.geometry.sphere import normalize
    from glass_pyg.ot import native
    monkeypatch.setattr(native, "usable", lambda *tensors: False)
    proj = SphereProjection(K=4, slices=2, gate_mode="learn", generator=torch.Generator().manual_seed(0)).double()
    x = normalize(torch.randn(100, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    w = torch.randn(100, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def run():
        xr = x.clone().requires_grad_(True)
        out = proj(xr)
        return out.detach(), torch.autograd.grad((out * w).sum(), [xr, *proj.parameters()])

    whole, g_whole = run()
    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 8 * 7)  # blocks of 7 points
    parts, g_parts = run()
    torch.testing.assert_close(parts, whole, atol=1e-15, rtol=0)  # the products summed in other blocks
    for p, q in zip(g_parts, g_whole):
        torch.testing.assert_close(p, q, atol=1e-14, rtol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(proj(x), whole, atol=1e-15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gate_mode", ["tie", "learn", "fixed"])
def test_compiled_projection_and_its_analytic_gradient_against_autograd(dtype, gate_mode):
    # the compiled pass and its hand-written gradient against torch's formula under autograd, with
    # points on anchors, at antipodes and next to anchors (the factor's and the norm's branches)
    from glass_pyg.geometry.sphere import normalize
    from glass_pyg.ot import native
    proj = SphereProjection(K=8, slices=3, gate_mode=gate_mode, generator=torch.Generator().manual_seed(0)).to(dtype)
    a = proj.anchors.detach().reshape(-1, 3).double()
    g = torch.Generator().manual_seed(1)
    x = torch.cat([normalize(torch.randn(1000, 3, generator=g, dtype=torch.float64)), a[:4], -a[4:8],
                   normalize(a[8:12] + 1e-9 * torch.randn(4, 3, generator=g, dtype=torch.float64))]).to(dtype)
    w = torch.randn(x.shape[0], 3, generator=g, dtype=torch.float64).to(dtype)

    def run():
        xr = x.clone().requires_grad_(True)
        out = proj(xr)
        return [out.detach(), *torch.autograd.grad((out * w).sum(), [xr, *proj.parameters()])]

    got = run()
    with native.disabled():
        want = run()
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for p, q in zip(got, want):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=tol, atol=tol * float(q.abs().max()))
    # more anchors than the compiled pass takes: the torch route, same numbers
    wide = SphereProjection(K=33, slices=1, generator=torch.Generator().manual_seed(0)).to(dtype)
    with native.disabled():
        want = wide(x)
    torch.testing.assert_close(wide(x), want, rtol=0, atol=0)
