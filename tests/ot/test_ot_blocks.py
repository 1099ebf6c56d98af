"""Band work in row blocks gives the same numbers as one block, and the solver's convergence
does not depend on the block size."""
import dataclasses

import pytest
import torch

import glass_pyg.ot._iterations as iterations
import glass_pyg.ot._row_blocks as blocks
from glass_pyg.ot import native, sinkhorn_banded
from glass_pyg.ot._laplacian import band_operator


def _state(monkeypatch, block_entries):
    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", block_entries)
    captured = {}
    newton = iterations.newton

    def spy(st, stair, *args):
        out = newton(st, stair, *args)
        # the solver's state after Newton (the plan later takes its logits' storage)
        captured["st"] = dataclasses.replace(st, row_logits=st.theta_row.clone(), workspace={})
        captured["stair"] = stair
        return out

    import glass_pyg.ot._sinkhorn_banded as banded
    monkeypatch.setattr(banded, "newton", spy)
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 700, generator=g, dtype=torch.float64)
    t = torch.randn(2, 900, generator=g, dtype=torch.float64).exp()
    plan = sinkhorn_banded(s, t, gamma=2.0, temperature="rank", method="newton")
    return plan, captured["st"], captured["stair"]


def _evaluate(st, stair):
    x = torch.sin(torch.arange(st.phi.shape[1], dtype=torch.float64)).expand_as(st.phi).contiguous()
    y = torch.cos(torch.arange(st.psi.shape[1], dtype=torch.float64)).expand_as(st.psi).contiguous()
    with native.disabled():  # the torch route works in row blocks (and forms the path's cuts)
        op = band_operator(st.band, stair, iterations.plan_row(st), iterations.plan_col(st))
    return [iterations.row_update(st, st.psi), iterations.col_update(st, st.phi),
            iterations.plan_row(st), iterations.plan_col(st), *op.matvec(x, y), op.cut]


def test_blocks_give_the_numbers_of_one_block(monkeypatch):
    plan_small, st, stair = _state(monkeypatch, 64)  # blocks of a row or two
    small = _evaluate(st, stair)
    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 1 << 40)
    whole = _evaluate(st, stair)
    for a, b in zip(small[:-1], whole[:-1]):  # per-row work: the same operations
        assert torch.equal(a, b)
    # the cut weights are a running sum of scattered terms: equal up to summation order
    assert torch.allclose(small[-1], whole[-1], rtol=1e-12, atol=1e-13 * float(whole[-1].max()))
    plan_whole, _, _ = _state(monkeypatch, 1 << 40)
    assert torch.allclose(plan_small.values, plan_whole.values, rtol=1e-9, atol=1e-15)


def test_add_to_columns_against_a_dense_scatter():
    g = torch.Generator().manual_seed(0)
    L, n, m, W = 2, 30, 40, 7
    start = torch.sort(torch.randint(0, m - W + 1, (L, n), generator=g), -1).values
    x = torch.rand(L, n, W, generator=g, dtype=torch.float64)
    out = torch.zeros(L, m, dtype=torch.float64)
    blocks.add_to_columns(out, x, start)
    dense = torch.zeros(L, n, m, dtype=torch.float64)
    for l in range(L):
        for i in range(n):
            dense[l, i, start[l, i]:start[l, i] + W] = x[l, i]
    assert torch.allclose(out, dense.sum(1))


@pytest.mark.slow
@pytest.mark.parametrize("block_entries", [1 << 15, 1 << 18])
def test_newton_converges_whatever_the_block_size(monkeypatch, block_entries):
    # 2^18 normal scores: the far tails decouple, and the preconditioner's cut weights there
    # are rounding; with too low a cut floor, the block size (summation order) decided
    # whether Newton converged in 2 steps or stalled
    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", block_entries)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1 << 18, generator=g, dtype=torch.float64)
    t = torch.randn(1 << 18, generator=g, dtype=torch.float64) + 1.0
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    assert bool(plan.converged)
    assert plan.newton_steps <= 3, plan.newton_steps


@pytest.mark.parametrize("cost_name", ["squared_euclidean", "squared_geodesic"])
def test_blocked_expectation_matches_gathering_all_pairs(monkeypatch, cost_name):
    from glass_pyg import losses

    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 64)
    g = torch.Generator().manual_seed(1)
    x_s = torch.nn.functional.normalize(torch.randn(40, 3, generator=g, dtype=torch.float64), dim=-1)
    x_t = torch.nn.functional.normalize(torch.randn(50, 3, generator=g, dtype=torch.float64), dim=-1)
    s = torch.randn(3, 40, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 50, generator=g, dtype=torch.float64)
    x_s.requires_grad_(True)
    x_t.requires_grad_(True)
    plan = sinkhorn_banded(s, t, gamma=0.3)
    cost = getattr(losses, cost_name)(x_s, x_t)
    blocked = plan.expectation(cost)
    gathered = plan.expectation(lambda r, c: cost(r, c))  # a plain callable: all pairs at once
    assert torch.allclose(blocked, gathered, rtol=1e-12)
    w = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    g1 = torch.autograd.grad((blocked * w).sum(), (s, x_s, x_t), retain_graph=True)
    g2 = torch.autograd.grad((gathered * w).sum(), (s, x_s, x_t))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cost_name", ["squared_euclidean", "squared_geodesic"])
def test_pair_costs_in_chunks_match_one_gather(monkeypatch, cost_name):
    from glass_pyg import losses
    from glass_pyg.geometry import geodesic_distance

    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 7)  # chunks of 2 pairs of 3-d points
    g = torch.Generator().manual_seed(4)
    x_s = torch.nn.functional.normalize(torch.randn(30, 3, generator=g, dtype=torch.float64), dim=-1)
    x_t = torch.nn.functional.normalize(torch.randn(20, 3, generator=g, dtype=torch.float64), dim=-1)
    x_s.requires_grad_(True)
    rows = torch.randint(0, 30, (2, 5, 7), generator=g)
    cols = torch.randint(0, 20, (2, 5, 7), generator=g)
    d = getattr(losses, cost_name)(x_s, x_t)(rows, cols)
    a, b = x_s[rows], x_t[cols]
    ref = ((a - b) ** 2).sum(-1) if cost_name == "squared_euclidean" else geodesic_distance(a, b) ** 2
    assert d.shape == (2, 5, 7)
    torch.testing.assert_close(d, ref, rtol=1e-13, atol=1e-15)
    w = torch.rand(2, 5, 7, generator=g, dtype=torch.float64)
    torch.testing.assert_close(torch.autograd.grad((d * w).sum(), x_s)[0],
                               torch.autograd.grad((ref * w).sum(), x_s)[0])


def test_band_costs_from_inner_products_with_many_more_targets():
    from glass_pyg import losses
    from glass_pyg.ot._expectation import band_costs_from_gram

    g = torch.Generator().manual_seed(7)
    x_s, x_t = torch.randn(40, 5, generator=g, dtype=torch.float64), torch.randn(3000, 5, generator=g,
                                                                                 dtype=torch.float64)
    plan = sinkhorn_banded(torch.randn(2, 40, generator=g, dtype=torch.float64),
                           torch.randn(2, 3000, generator=g, dtype=torch.float64), gamma=0.5, temperature="rank")
    cost = losses.squared_euclidean(x_s, x_t)
    d = band_costs_from_gram(x_s, x_t, plan.perm_s, plan.perm_t, plan.row_start, plan.width, cost.gram,
                             block_rows=8)  # runs of ~600 columns for 8 rows: the window pairs' inner products
    torch.testing.assert_close(d, cost(*plan.index_pairs()), rtol=1e-11, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_band_costs_from_inner_products_match_the_pairs(dtype):
    from glass_pyg import losses
    from glass_pyg.ot._expectation import band_costs_from_gram

    g = torch.Generator().manual_seed(6)
    x_s = 3.0 + torch.randn(300, 8, generator=g, dtype=dtype)  # offset: the norms dominate the distances
    x_t = 3.0 + torch.randn(420, 8, generator=g, dtype=dtype)
    s = torch.randn(3, 300, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randn(3, 420, generator=g, dtype=dtype)
    plan = sinkhorn_banded(s, t, gamma=1.0, temperature="rank")
    cost = losses.squared_euclidean(x_s, x_t)
    rows, cols = plan.index_pairs()
    d = band_costs_from_gram(x_s, x_t, plan.perm_s, plan.perm_t, plan.row_start, plan.width, cost.gram,
                             block_rows=37)
    tol = dict(rtol=1e-11, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(d, cost(rows, cols), **tol)
    # the expectation takes this path for points without gradient, and the pairs' path otherwise
    fast = plan.expectation(cost)
    x_s.requires_grad_(True)
    paired = plan.expectation(losses.squared_euclidean(x_s, x_t))
    torch.testing.assert_close(fast, paired, **tol)
    g_fast = torch.autograd.grad(fast.sum(), s, retain_graph=True)[0]
    g_paired = torch.autograd.grad(paired.sum(), s)[0]
    # the implicit backward's CG meets its tolerance at a different step for a different rounding
    torch.testing.assert_close(g_fast, g_paired, rtol=0, atol=1e-5 * float(g_paired.abs().max()))


def test_blocked_expectation_skips_zero_entries(monkeypatch):
    from glass_pyg.ot._expectation import BlockedExpectation

    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 32)
    g = torch.Generator().manual_seed(5)
    values = torch.rand(2, 9, 4, generator=g, dtype=torch.float64)
    values[torch.rand(2, 9, 4, generator=g) < 0.5] = 0.0  # band padding
    values.requires_grad_(True)
    x_s = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(11, 3, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, 9, (2, 9, 4), generator=g)
    cols = torch.randint(0, 11, (2, 9, 4), generator=g)

    def pair(x, y):
        return ((x - y) ** 2).sum(-1)

    out = BlockedExpectation.apply(values, x_s, x_t, rows, cols, pair)
    D = pair(x_s[rows], x_t[cols])
    ref = (values * D).sum((-2, -1))
    torch.testing.assert_close(out, ref)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    got = torch.autograd.grad((out * w).sum(), (values, x_s, x_t))
    want = torch.autograd.grad((ref * w).sum(), (values, x_s, x_t))
    torch.testing.assert_close(got[1:], want[1:])
    nz = values != 0
    torch.testing.assert_close(got[0][nz], want[0][nz])
    assert bool((got[0][~nz] == 0).all())


def test_blocked_expectation_gradcheck(monkeypatch):
    from glass_pyg.ot._expectation import BlockedExpectation

    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", 16)
    g = torch.Generator().manual_seed(2)
    values = torch.rand(2, 6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x_s = torch.randn(6, 2, generator=g, dtype=torch.float64, requires_grad=True)
    x_t = torch.randn(7, 2, generator=g, dtype=torch.float64, requires_grad=True)
    rows = torch.randint(0, 6, (2, 6, 3), generator=g)
    cols = torch.randint(0, 7, (2, 6, 3), generator=g)

    def pair(x, y):
        return ((x - y) ** 2).sum(-1).sqrt() * x[:, 0]

    assert torch.autograd.gradcheck(lambda v, a, b: BlockedExpectation.apply(v, a, b, rows, cols, pair),
                                    (values, x_s, x_t))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_squared_geodesic_band_costs_from_inner_products_match_the_pairs(dtype):
    from glass_pyg import losses
    from glass_pyg.geometry import normalize
    from glass_pyg.ot._expectation import band_costs_from_gram

    g = torch.Generator().manual_seed(8)
    x_s = normalize(torch.randn(400, 3, generator=g, dtype=dtype))
    x_t = torch.cat([x_s[:200], -x_s[200:210], normalize(torch.randn(190, 3, generator=g, dtype=dtype))])
    s = torch.cat([x_s[:, 2], x_s[:200, 2]])[:400].unsqueeze(0)  # equal and antipodal points in the band
    plan = sinkhorn_banded(s, x_t[:, 2].unsqueeze(0), gamma=1.0, temperature="rank")
    cost = losses.squared_geodesic(x_s, x_t)
    d = band_costs_from_gram(x_s, x_t, plan.perm_s, plan.perm_t, plan.row_start, plan.width, cost.gram,
                             block_rows=37)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d, cost(*plan.index_pairs()), **tol)
    x_t.requires_grad_(True)  # the pairs' path
    torch.testing.assert_close(plan.expectation(cost).detach(),
                               plan.expectation(losses.squared_geodesic(x_s, x_t)).detach(), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compiled_window_costs_match_the_pairs(dtype):
    # the compiled costs of the shipped losses on a band's windows against their pair functions, and
    # the expectation takes them (with the gram route and the pairs' route agreeing)
    from glass_pyg import losses
    from glass_pyg.geometry import normalize
    from glass_pyg.ot import native
    from glass_pyg.ot._expectation import band_costs_from_gram

    g = torch.Generator().manual_seed(9)
    x_s = normalize(torch.randn(500, 3, generator=g, dtype=torch.float64)).to(dtype)
    x_t = torch.cat([x_s[:100], -x_s[100:120], normalize(torch.randn(380, 3, generator=g, dtype=torch.float64)
                                                        ).to(dtype)])
    plan = sinkhorn_banded(x_s[:, 2].unsqueeze(0).repeat(2, 1), x_t[:, 1].unsqueeze(0).repeat(2, 1) * 1.1,
                           gamma=1.0, temperature="rank")
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for make, name in ((losses.squared_geodesic, "squared_geodesic"), (losses.squared_euclidean, "squared_euclidean")):
        cost = make(x_s, x_t)
        got = native.window_costs(x_s[plan.perm_s], x_t[plan.perm_t], plan.row_start, plan.width, name)
        torch.testing.assert_close(got, cost(*plan.index_pairs()), **tol)
        gram = band_costs_from_gram(x_s, x_t, plan.perm_s, plan.perm_t, plan.row_start, plan.width, cost.gram)
        torch.testing.assert_close(plan.expectation(cost), (plan.values * gram).sum((-2, -1)),
                                   rtol=1e-10 if dtype == torch.float64 else 1e-4, atol=0)
    wide = torch.randn(500, 7, generator=g, dtype=dtype), torch.randn(500, 7, generator=g, dtype=dtype)
    got = native.window_costs(wide[0][plan.perm_s], wide[1][plan.perm_t], plan.row_start, plan.width,
                              "squared_euclidean")
    torch.testing.assert_close(got, losses.squared_euclidean(*wide)(*plan.index_pairs()), **tol)
    with pytest.raises(ValueError, match="kind"):
        native.window_costs(x_s[plan.perm_s], x_t[plan.perm_t], plan.row_start, plan.width, "cosine")
    with pytest.raises(ValueError, match="d = 3"):
        native.window_costs(wide[0][plan.perm_s], wide[1][plan.perm_t], plan.row_start, plan.width,
                            "squared_geodesic")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", ["squared_geodesic", "squared_euclidean"])
def test_compiled_lifted_expectation_and_its_gradients_match_the_pairs(monkeypatch, dtype, name):
    # points that need gradients (a learned rotation, learned features): the compiled passes against
    # the pairs' row blocks under autograd, for the scores' and both point sets' gradients; both
    # routes precondition with the path, so that their plans agree to rounding
    import glass_pyg.ot._laplacian as laplacian
    from glass_pyg import losses
    from glass_pyg.geometry import normalize
    from glass_pyg.ot import native
    monkeypatch.setattr(laplacian, "STAIRCASE_FAR_SHARE", -1.0)

    g = torch.Generator().manual_seed(10)
    d = 3 if name == "squared_geodesic" else 6
    x_s = torch.randn(400, d, generator=g, dtype=torch.float64)
    # equal points in the band (no direction at distance 0); no antipodes, where the distance's
    # gradient has no direction either and both routes return one from rounding
    x_t = torch.cat([x_s[:80], torch.randn(320, d, generator=g, dtype=torch.float64)])
    x_s, x_t = (normalize(x_s).to(dtype), normalize(x_t).to(dtype)) if d == 3 else (x_s.to(dtype), x_t.to(dtype))
    s = torch.randn(2, 400, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randn(2, 400, generator=g, dtype=torch.float64).to(dtype)

    def run():
        sr, xs, xt = (v.clone().requires_grad_(True) for v in (s, x_s, x_t))
        plan = sinkhorn_banded(sr, t, gamma=1.0, temperature="rank")
        out = plan.expectation(getattr(losses, name)(xs, xt))
        w = torch.tensor([0.3, -1.2], dtype=dtype)
        return [out.detach(), *torch.autograd.grad((out * w).sum(), [sr, xs, xt])]

    got = run()
    with native.disabled():
        want = run()
    # the scores' gradient also passes the solver's adjoint solve, which stops at its tolerance at
    # another iteration for another rounding (the torch solver): compared at that tolerance
    tols = [1e-9, 1e-6, 1e-9, 1e-9] if dtype == torch.float64 else [2e-3] * 4
    for p, q, tol in zip(got, want, tols):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=tol, atol=tol * float(q.abs().max()))


@pytest.mark.parametrize("compiled", [True, False])
def test_a_second_backward_of_an_expectation_gives_the_same_gradients(compiled):
    # the first backward scales the costs kept from the forward in place (no fresh plan-sized
    # gradient); a second one, with retain_graph, must form them again, not scale them twice
    from contextlib import nullcontext

    from glass_pyg import losses
    from glass_pyg.geometry import normalize
    from glass_pyg.ot import native

    g = torch.Generator().manual_seed(12)
    x_s = normalize(torch.randn(300, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    x_t = normalize(torch.randn(300, 3, generator=g, dtype=torch.float64)).requires_grad_(True)
    s = torch.randn(2, 300, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.randn(2, 300, generator=g, dtype=torch.float64)
    w = torch.tensor([0.7, -1.3], dtype=torch.float64)
    with nullcontext() if compiled else native.disabled():
        out = sinkhorn_banded(s, t, gamma=1.0, temperature="rank").expectation(losses.squared_geodesic(x_s, x_t))
        first = torch.autograd.grad((out * w).sum(), [s, x_s, x_t], retain_graph=True)
        second = torch.autograd.grad((out * w).sum(), [s, x_s, x_t])
        # the values' gradient alone: the costs times the upstream gradient, whatever it is
        plan = sinkhorn_banded(s.detach(), t, gamma=1.0, temperature="rank")
        values = plan.values.detach().requires_grad_(True)
        plan = dataclasses.replace(plan, values=values)
        grad_v, = torch.autograd.grad((plan.expectation(losses.squared_geodesic(x_s, x_t)) * w).sum(), values)
    for a, b in zip(first, second):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0.0)
    rows, cols = plan.index_pairs()
    dense = losses.squared_geodesic(x_s.detach(), x_t.detach())(rows, cols)
    # on the plan's nonzero entries (elsewhere the solver's backward multiplies it by zero)
    stored = values.detach() != 0
    want = dense * w.view(-1, 1, 1)
    torch.testing.assert_close(grad_v[stored], want[stored], rtol=1e-10, atol=1e-12)
