"""Band work in row blocks gives the same numbers as one block, and the solver's convergence
does not depend on the block size."""
import pytest
import torch

import glass_pyg.ot.blocks as blocks
import glass_pyg.ot.iterations as iterations
from glass_pyg.ot import sinkhorn_banded
from glass_pyg.ot.laplacian import band_operator


def _state(monkeypatch, block_entries):
    monkeypatch.setattr(blocks, "_CPU_BLOCK_ENTRIES", block_entries)
    captured = {}
    newton = iterations.newton

    def spy(st, stair, *args):
        captured["st"], captured["stair"] = st, stair
        return newton(st, stair, *args)

    import glass_pyg.ot.banded as banded
    monkeypatch.setattr(banded, "newton", spy)
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 700, generator=g, dtype=torch.float64)
    t = torch.randn(2, 900, generator=g, dtype=torch.float64).exp()
    plan = sinkhorn_banded(s, t, gamma=2.0, temperature="rank", method="newton")
    return plan, captured["st"], captured["stair"]


def _evaluate(st, stair):
    x = torch.sin(torch.arange(st.phi.shape[1], dtype=torch.float64)).expand_as(st.phi).contiguous()
    y = torch.cos(torch.arange(st.psi.shape[1], dtype=torch.float64)).expand_as(st.psi).contiguous()
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

    monkeypatch.setattr(losses, "_CHUNK_VALUES", 7)  # chunks of 2 pairs of 3-d points
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


def test_blocked_expectation_gradcheck(monkeypatch):
    from glass_pyg.ot.expectation import BlockedExpectation

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
