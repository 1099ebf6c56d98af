"""Banded solver against the dense solver, POT and the entropic optimality conditions."""

import pytest
import torch
from conftest import dense_cost, pot_plan

from glass_pyg.ot import emd_1d_cost, sinkhorn_banded, sinkhorn_dense


def _scores(kind, n, gen, dtype=torch.float64):
    if kind == "normal":
        return torch.randn(n, generator=gen, dtype=dtype)
    if kind == "exponential":
        return -torch.rand(n, generator=gen, dtype=dtype).log()
    if kind == "ties":
        return torch.randint(0, 6, (n,), generator=gen).to(dtype) / 3.0
    raise ValueError(kind)


def check_kkt(plan, s, t, a, b, gamma, tol, band_eps):
    """Independent certificate: the entropic optimum is the unique Gibbs plan
    exp((f_i + g_j - C_ij)/gamma) with marginals a, b. Checked on the full matrix."""
    P = plan.to_dense().double()
    C = dense_cost(s.double(), t.double())
    gibbs = torch.exp((plan.f.double()[0, :, None] + plan.g.double()[0, None, :] - C) / float(plan.gamma[0]))
    inside = P > 0
    # entries below ~1e-250 of the mass are the solver's logit floor, not the Gibbs value
    floor = 1e-250 if P.dtype == torch.float64 and plan.values.dtype == torch.float64 else 1e-30
    assert torch.allclose(P[inside], gibbs[inside], rtol=1e-6, atol=floor)
    omitted = gibbs[~inside].sum()
    assert omitted <= band_eps * a.sum() * 1.0001, f"band omitted {float(omitted):.3g}"
    assert float(omitted) <= float(plan.omitted_mass) * 1.0001 + 1e-300
    assert (P.sum(1) - a.double()).abs().sum() <= 2 * tol + band_eps
    assert (P.sum(0) - b.double()).abs().sum() <= 2 * tol + band_eps


CASES = [
    # (n, m, kind_s, kind_t, shift, weights, gamma)
    (120, 120, "normal", "normal", 0.0, False, 0.05),
    (150, 90, "normal", "normal", 1.0, False, 0.1),
    (80, 140, "normal", "exponential", 2.0, False, 0.02),
    (100, 100, "normal", "normal", 5.0, True, 0.05),
    (90, 110, "ties", "ties", 0.5, False, 0.1),
    (100, 100, "normal", "normal", 3.0, False, 1.0),
    (100, 70, "exponential", "normal", -4.0, True, 0.01),
]


@pytest.mark.parametrize("n,m,ks,kt,shift,weighted,gamma", CASES)
def test_banded_matches_pot_and_dense(n, m, ks, kt, shift, weighted, gamma, gen):
    s = _scores(ks, n, gen)
    t = _scores(kt, m, gen) + shift
    if weighted:
        a = torch.rand(n, generator=gen, dtype=torch.float64) + 0.1
        b = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
        a, b = a / a.sum(), b / b.sum()
    else:
        a, b = torch.full((n,), 1.0 / n, dtype=torch.float64), torch.full((m,), 1.0 / m, dtype=torch.float64)
    plan = sinkhorn_banded(s, t, a, b, gamma=gamma, tol=1e-10, band_eps=1e-9, max_iter=5000)
    assert bool(plan.converged)
    P = plan.to_dense()
    assert torch.isfinite(P).all()
    ref = pot_plan(s, t, a, b, gamma)
    assert (P - ref).abs().sum() < 1e-6
    dense = sinkhorn_dense(dense_cost(s, t), a, b, gamma=gamma, tol=1e-11, max_iter=100000)
    assert (P - dense.to_dense()).abs().sum() < 1e-6
    assert torch.allclose(plan.transport_cost(), dense.transport_cost(), rtol=1e-6)
    check_kkt(plan, s, t, a, b, gamma, 1e-10, 1e-9)


@pytest.mark.parametrize("gamma", [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
@pytest.mark.parametrize("shift", [0.0, 2.5, 5.0])
def test_gamma_range_is_certified(gamma, shift, gen):
    """Over four decades of gamma (where dense Sinkhorn stalls at the small end)
    the banded plan satisfies the optimality conditions on the full matrix."""
    n, m = 160, 130
    s = torch.randn(n, generator=gen, dtype=torch.float64)
    t = 0.5 * torch.randn(m, generator=gen, dtype=torch.float64) + shift
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    b = torch.full((m,), 1.0 / m, dtype=torch.float64)
    plan = sinkhorn_banded(s, t, gamma=gamma, tol=1e-9, band_eps=1e-8, max_iter=20000)
    assert bool(plan.converged)
    check_kkt(plan, s, t, a, b, gamma, 1e-9, 1e-8)
    if gamma >= 1e-2:
        assert (plan.to_dense() - pot_plan(s, t, a, b, gamma)).abs().sum() < 1e-6


def test_small_gamma_approaches_exact_cost(gen):
    ot = pytest.importorskip("ot")
    s = torch.randn(200, generator=gen, dtype=torch.float64)
    t = torch.randn(170, generator=gen, dtype=torch.float64).exp()
    exact = ot.emd2_1d(s.numpy(), t.numpy())
    assert float(emd_1d_cost(s, t)) == pytest.approx(exact, rel=1e-10)
    gaps = []
    for gamma in [1e-1, 1e-2, 1e-3, 1e-4]:
        plan = sinkhorn_banded(s, t, gamma=gamma, tol=1e-10, max_iter=20000)
        gaps.append(abs(float(plan.transport_cost()) - exact))
    assert all(g2 < g1 for g1, g2 in zip(gaps, gaps[1:]))
    assert gaps[-1] < 2e-3 * exact


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_slices_and_dtypes(dtype, gen):
    L, n, m = 3, 64, 48
    s = torch.randn(L, n, generator=gen, dtype=torch.float64)
    t = torch.randn(L, m, generator=gen, dtype=torch.float64) * torch.tensor([[0.5], [1.0], [2.0]]) + 1.0
    gam = torch.tensor([0.05, 0.1, 0.5], dtype=torch.float64)
    batch = sinkhorn_banded(s.to(dtype), t.to(dtype), gamma=gam.to(dtype), tol=1e-7)
    assert batch.values.dtype == dtype and batch.cost.shape == (L,)
    D = batch.to_dense()
    assert D.shape == (L, n, m) and D.dtype == dtype
    for l in range(L):
        one = sinkhorn_banded(s[l], t[l], gamma=float(gam[l]), tol=1e-10)
        assert one.to_dense().shape == (n, m)
        ref = pot_plan(s[l], t[l], torch.full((n,), 1 / n), torch.full((m,), 1 / m), float(gam[l]))
        atol = 1e-5 if dtype == torch.float32 else 1e-6
        assert (D[l].double() - ref).abs().sum() < atol
        assert (one.to_dense() - ref).abs().sum() < 1e-6


def test_float32_inputs_solve_in_float64_by_default(gen):
    """A float32 problem of any size takes the float64 Newton solve (few iterations) and
    returns float32 results equal to the float64 problem's."""
    n = 1 << 16
    s = torch.randn(n, generator=gen, dtype=torch.float64)
    t = torch.randn(n, generator=gen, dtype=torch.float64) + 0.5
    plan = sinkhorn_banded(s.float(), t.float(), gamma=1.0, temperature="rank", tol=1e-4)
    ref = sinkhorn_banded(s.float().double(), t.float().double(), gamma=1.0, temperature="rank", tol=1e-4)
    assert plan.values.dtype == torch.float32 and bool(plan.converged)
    assert plan.newton_steps > 0 and plan.iterations <= 10
    torch.testing.assert_close(plan.values, ref.values.float(), rtol=0, atol=1e-7)
    torch.testing.assert_close(plan.cost, ref.cost.float())


def test_float32_compute_takes_newton_steps(gen):
    """Float32 iterations on request: the Newton steps converge where the couplings underflow
    (tails of normal scores at rank temperature split the float32 plan into blocks)."""
    s = torch.randn(4096, generator=gen, dtype=torch.float64)
    t = torch.randn(4096, generator=gen, dtype=torch.float64) + 0.5
    plan = sinkhorn_banded(s.float(), t.float(), gamma=1.0, temperature="rank", tol=1e-4,
                           compute_dtype=torch.float32)
    ref = sinkhorn_banded(s.float().double(), t.float().double(), gamma=1.0, temperature="rank", tol=1e-9)
    assert bool(plan.converged) and plan.newton_steps > 0 and plan.iterations <= 10
    # an L1 marginal error of 1e-4 moves the plan by about that much in L1
    assert float((plan.values.double() - ref.values).abs().sum()) < 1e-3


def test_float32_compute_on_request(gen):
    s = torch.randn(20000, generator=gen)
    t = torch.randn(20000, generator=gen) + 1.0
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank", tol=2e-4, max_iter=400,
                           compute_dtype=torch.float32)
    assert plan.values.dtype == torch.float32 and bool(plan.converged)
    assert torch.isfinite(plan.values).all()
    assert plan.width < 200


def test_reference_positional_signature(gen):
    """Calls written against the reference README keep working (sorted inputs)."""
    n = 50
    s, _ = torch.sort(torch.randn(n, generator=gen, dtype=torch.float64))
    t, _ = torch.sort(torch.randn(n, generator=gen, dtype=torch.float64))
    mu = torch.full((n,), 1.0 / n, dtype=torch.float64)
    plan = sinkhorn_banded(s, t, mu, mu, 0.1, 500, 1e-9, 1e-8)
    assert bool(plan.converged)
    ref = pot_plan(s, t, mu, mu, 0.1)
    assert (plan.to_dense() - ref).abs().sum() < 1e-6


def test_rank_temperature_keeps_band_constant(gen):
    widths = []
    for n in [256, 1024, 4096]:
        s = torch.randn(n, generator=gen, dtype=torch.float64)
        t = torch.randn(n, generator=gen, dtype=torch.float64) + 1.0
        plan = sinkhorn_banded(s, t, gamma=2.0, temperature="rank", tol=1e-8)
        assert bool(plan.converged)
        spacing = lambda x: (x.max() - x.min()) / (n - 1)
        assert float(plan.gamma) == pytest.approx(2.0 * float(spacing(s) * spacing(t)))
        widths.append(plan.width)
    assert max(widths) <= 3 * min(widths), widths


def test_band_widens_from_a_poor_warm_start(gen):
    """Warm-starting from another problem's potentials: the solver keeps the band of the
    exact dual, falls back to the cold start where the warm one is worse, and converges."""
    n = 200
    s = torch.randn(n, generator=gen, dtype=torch.float64)
    t = torch.randn(n, generator=gen, dtype=torch.float64) + 2.0
    good = sinkhorn_banded(s, t, gamma=0.05, tol=1e-10, band_eps=1e-9)
    other = sinkhorn_banded(s, 3.0 * t.flip(0), gamma=0.01, tol=1e-10, band_eps=1e-9)
    plan = sinkhorn_banded(s, t, gamma=0.05, tol=1e-10, band_eps=1e-9, init=(other.f[0], other.g[0]),
                           max_iter=2000)
    assert bool(plan.converged)
    assert (plan.to_dense() - good.to_dense()).abs().sum() < 1e-6
    a = torch.full((n,), 1.0 / n, dtype=torch.float64)
    check_kkt(plan, s, t, a, a, 0.05, 1e-10, 1e-9)


def test_sinkhorn_only_method_agrees(gen):
    s = torch.randn(100, generator=gen, dtype=torch.float64)
    t = torch.randn(80, generator=gen, dtype=torch.float64)
    p1 = sinkhorn_banded(s, t, gamma=0.1, tol=1e-10, method="sinkhorn", max_iter=5000)
    p2 = sinkhorn_banded(s, t, gamma=0.1, tol=1e-10, method="newton")
    assert p1.newton_steps == 0 and p2.newton_steps > 0
    assert (p1.to_dense() - p2.to_dense()).abs().sum() < 1e-8


def test_unconverged_is_reported(gen):
    s = torch.randn(300, generator=gen, dtype=torch.float64)
    t = torch.randn(300, generator=gen, dtype=torch.float64) + 1
    with pytest.warns(UserWarning, match="marginal error"):
        plan = sinkhorn_banded(s, t, gamma=1e-3, max_iter=3, tol=1e-12, method="sinkhorn")
    assert not bool(plan.converged)
    assert float(plan.marginal_error) > 1e-12
    assert torch.isfinite(plan.values).all()


def test_warm_start_is_chosen_per_slice(gen):
    """A slice warm-started from its own solution needs no iteration; a slice whose warm start is
    worse than the cold one takes the cold one (the chosen start's sweep is the warm-up's first)."""
    s = torch.randn(2, 500, generator=gen, dtype=torch.float64)
    t = torch.randn(2, 500, generator=gen, dtype=torch.float64) + 1.0
    cold = sinkhorn_banded(s, t, gamma=0.05, tol=1e-9)
    again = sinkhorn_banded(s, t, gamma=0.05, tol=1e-9, init=(cold.f, cold.g))
    assert again.iterations == 0 and bool(again.converged.all()) and bool(again.warm_started.all())
    assert not bool(cold.warm_started.any())
    torch.testing.assert_close(again.values, cold.values, rtol=1e-10, atol=1e-15)
    junk = torch.randn(500, generator=gen, dtype=torch.float64) * 50
    mixed = sinkhorn_banded(s, t, gamma=0.05, tol=1e-9, init=(torch.stack([cold.f[0], junk]), cold.g))
    assert bool(mixed.converged.all()) and mixed.warm_started.tolist() == [True, False]
    assert (mixed.to_dense() - cold.to_dense()).abs().sum((-2, -1)).max() < 1e-7
    torch.testing.assert_close(mixed.values[0], cold.values[0], rtol=1e-6, atol=1e-12)


def test_warm_start_from_nearby_scores_converges(gen):
    """At rank temperature a warm start from scores moved by about 100 gamma passes the first-sweep
    test, yet damped Newton stalled from it (the solve then ran out of sweeps at error 2e-3): a
    warm start Newton cannot finish from restarts cold, and every solve converges as the cold one."""
    g = torch.Generator().manual_seed(3)
    s = torch.randn(1, 3000, generator=g, dtype=torch.float64)
    t = torch.randn(1, 2000, generator=g, dtype=torch.float64).exp()
    base = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    taken = []
    for shift in (0.0, 1e-4, 1e-3, 1e-2):
        cold = sinkhorn_banded(s, t + shift, gamma=1.0, temperature="rank")
        warm = sinkhorn_banded(s, t + shift, gamma=1.0, temperature="rank", init=(base.f, base.g))
        assert bool(cold.converged) and bool(warm.converged), shift
        assert (warm.to_dense() - cold.to_dense()).abs().sum() < 1e-5
        taken.append(bool(warm.warm_started))
    assert taken[0] and not taken[2]  # its own solution is taken; the one Newton stalled from is not


def test_a_band_larger_than_the_memory_is_a_clear_error(gen, monkeypatch):
    """Heavy-tailed scores at rank temperature widen the band where the scores are dense, and a batch
    takes its widest slice's width: past the device's memory the error names the slice and the cause."""
    import glass_pyg.ot._band_memory as band_memory
    n = 4000
    s = torch.randn(2, n, generator=gen, dtype=torch.float64)
    t = torch.randn(2, n, generator=gen, dtype=torch.float64)
    s[1] = s[1] ** 5  # heavy tails: the mean spacing is far above the median one
    narrow = sinkhorn_banded(s[:1], t[:1], gamma=1.0, temperature="rank")
    wide = sinkhorn_banded(s[1:], t[1:], gamma=1.0, temperature="rank")
    assert wide.values.shape[-1] > 8 * narrow.values.shape[-1]
    need = 2 * n * wide.values.shape[-1] * 8
    monkeypatch.setattr(band_memory, "device_bytes", lambda device: need - 1)
    with pytest.raises(MemoryError, match=r"(?s)Slice 1 is the widest.*temperature='rank'.*heavy tails.*solve "
                                          r"slice 1 apart"):
        sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    monkeypatch.setattr(band_memory, "device_bytes", lambda device: need)
    sinkhorn_banded(s, t, gamma=1.0, temperature="rank")  # fits: solved
    monkeypatch.setattr(band_memory, "device_bytes", lambda device: 10**6)
    with pytest.raises(MemoryError, match="temperature='absolute' the plan spans a fixed share"):
        sinkhorn_banded(s[0], t[0], gamma=1.0)
