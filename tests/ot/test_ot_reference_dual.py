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
