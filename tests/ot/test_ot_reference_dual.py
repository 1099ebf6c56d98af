"""The reference dual the banded solver starts from: a feasible exact 1-D dual whose weak
staircase links sit where the entropic dual puts them, so Newton starts in its quadratic basin."""
import torch

from glass_pyg.ot import sinkhorn_banded, sinkhorn_dense
from glass_pyg.ot._band import exact_dual, reference_dual, staircase


def _sorted_problem(n, m, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    s = torch.sort(torch.randn(1, n, generator=g, dtype=torch.float64) * spread).values
    t = torch.sort(torch.randn(1, m, generator=g, dtype=torch.float64) * spread + 0.3).values
    a = torch.rand(1, n, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(1, m, generator=g, dtype=torch.float64) + 0.2
    return s, t, a / a.sum(), b / b.sum()


def test_reference_dual_is_feasible_for_any_weights():
    for seed, (n, m) in enumerate([(7, 9), (12, 5), (20, 20)]):
        s, t, a, b = _sorted_problem(n, m, seed)
        st = staircase(a, b)
        for gamma in (1e-3, 0.1, 10.0):
            f, g = reference_dual(s, t, st, torch.tensor([gamma], dtype=torch.float64))
            reduced = (s[0, :, None] - t[0, None, :]) ** 2 - f[0, :, None] - g[0, None, :]
            assert float(reduced.min()) > -1e-9, (seed, gamma, float(reduced.min()))


def test_breaks_split_the_cycle_gap_evenly():
    # n = m with uniform weights: every cell boundary is a break of the staircase
    s = torch.tensor([[0.0, 1.0, 3.0, 4.5, 7.0]], dtype=torch.float64)
    t = s + 0.25
    a = torch.full_like(s, 0.2)
    st = staircase(a, a)
    gamma = torch.tensor([1e-3], dtype=torch.float64)  # every gap G is >> gamma
    f, g = reference_dual(s, t, st, gamma)
    C = (s[0, :, None] - t[0, None, :]) ** 2
    R = C - f[0, :, None] - g[0, None, :]
    assert torch.allclose(R.diagonal(), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    for i in range(1, 5):
        gap = 2 * (s[0, i] - s[0, i - 1]) * (t[0, i] - t[0, i - 1])
        assert abs(float(R[i, i - 1] - gap / 2)) < 1e-12
        assert abs(float(R[i - 1, i] - gap / 2)) < 1e-12
    # exact_dual makes the lower crossing tight instead: the other end of the interval
    f0, g0 = exact_dual(s, t, st)
    R0 = C - f0[0, :, None] - g0[0, None, :]
    assert float(R0[1, 0]) < 1e-12 and float(R0[0, 1]) > 0.5


def test_relaxed_links_match_the_converged_entropic_plan():
    # well separated pairs: the crossing entries of the converged plan have reduced cost ~ G/2
    s = torch.tensor([0.0, 1.0, 2.2, 3.1, 4.0, 5.3], dtype=torch.float64)
    t = s + 0.1
    gamma = 0.25  # G / gamma from 6 to 11: crossings carry e^-3 to e^-6 of the diagonal
    plan = sinkhorn_dense((s[:, None] - t[None, :]) ** 2, gamma=gamma, tol=1e-11, max_iter=100000)
    P = plan.to_dense()
    st = staircase(torch.full((1, 6), 1 / 6, dtype=torch.float64), torch.full((1, 6), 1 / 6, dtype=torch.float64))
    f, g = reference_dual(s[None], t[None], st, torch.tensor([gamma], dtype=torch.float64))
    C = (s[:, None] - t[None, :]) ** 2
    R = C - f[0, :, None] - g[0, None, :]
    for i in range(1, 6):
        # cross ratio of the entropic plan against the diagonal cells, in units of the cost
        x = -gamma * float(torch.log(P[i, i - 1]) - 0.5 * (torch.log(P[i, i]) + torch.log(P[i - 1, i - 1])))
        gap = float(2 * (s[i] - s[i - 1]) * (t[i] - t[i - 1]))
        assert abs(x - float(R[i, i - 1])) < 1e-3 * gap, (i, x, float(R[i, i - 1]), gap)


def test_newton_starts_in_its_quadratic_basin_at_rank_temperature():
    # sparse tails against sqrt(gamma): exact_dual's tight crossings left Newton ~11 damped steps here
    g = torch.Generator().manual_seed(0)
    s = torch.randn(4096, generator=g, dtype=torch.float64)
    t = torch.randn(4096, generator=g, dtype=torch.float64) + 1.0
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert bool(plan.converged)
    assert plan.newton_steps <= 4, plan.newton_steps


def test_compiled_link_relaxation_matches_torch():
    # the relaxed links in one compiled pass against the torch route: uniform weights (every
    # boundary a link), random weights, n != m, tied scores, two slices, several temperatures
    import pytest

    from glass_pyg.ot import native

    if native.link_relaxation(*[torch.zeros(1, 1, dtype=torch.float64)] * 4, torch.zeros(1, 1, dtype=torch.int64),
                              torch.ones(1, dtype=torch.float64)) is None:
        pytest.skip(native.status())
    g = torch.Generator().manual_seed(7)
    cases = []
    for n, m, uniform in [(300, 300, True), (300, 200, False), (57, 411, False)]:
        s = torch.sort(torch.randn(2, n, generator=g, dtype=torch.float64), -1).values
        t = torch.sort(torch.randn(2, m, generator=g, dtype=torch.float64) + 0.4, -1).values
        s[:, 10:14] = s[:, 10:11]  # ties
        if uniform:
            a, b = torch.full((2, n), 1.0 / n, dtype=torch.float64), torch.full((2, m), 1.0 / m, dtype=torch.float64)
        else:
            a = torch.rand(2, n, generator=g, dtype=torch.float64) + 0.1
            b = torch.rand(2, m, generator=g, dtype=torch.float64) + 0.1
            a, b = a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)
        cases.append((s, t, a, b))
    relaxed = 0.0
    for s, t, a, b in cases:
        st = staircase(a, b)
        for gamma in (1e-6, 1e-3, 0.1, 10.0):
            gam = torch.tensor([gamma, 3 * gamma], dtype=torch.float64)
            got = reference_dual(s, t, st, gam)
            with native.disabled():
                want = reference_dual(s, t, st, gam)
            relaxed = max(relaxed, float((got[0] - exact_dual(s, t, st)[0]).abs().max()))
            for x, y in zip(got, want):
                torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-13 * float(y.abs().max()))
    assert relaxed > 1e-3  # links are relaxed: the comparison is not of two exact duals
