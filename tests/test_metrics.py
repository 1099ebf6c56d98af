import itertools
import warnings

import pytest
import torch

from glass_pyg import _decoding as decoding
from glass_pyg import metrics as M
from glass_pyg.ot import sinkhorn_banded


def random_sparse_plan(n, m, density, gen):
    P = torch.rand(n, m, generator=gen, dtype=torch.float64)
    P = P * (torch.rand(n, m, generator=gen) < density)
    return P


def brute_force(P, cost=None):
    n, m = P.shape
    best, best_val = None, None
    for cols in itertools.permutations(range(m), n):
        if any(P[i, j] == 0 for i, j in enumerate(cols)):
            continue
        val = sum(float(cost[i, j]) if cost is not None else -float(P[i, j]) for i, j in enumerate(cols))
        if best_val is None or val < best_val - 1e-12:
            best, best_val = cols, val
    return best


@pytest.fixture(params=["dense", "sparse"])
def solver(request, monkeypatch):
    """Keyword arguments of ``to_permutation`` that run a test with the dense exact solver
    and with the sparse exact one (the default beyond the dense limit is greedy)."""
    if request.param == "sparse":
        monkeypatch.setattr(M, "_DENSE_LIMIT", 0)
        return {"assignment": "optimal"}
    return {}


@pytest.mark.parametrize("seed", range(6))
def test_to_permutation_matches_brute_force(seed, solver):
    gen = torch.Generator().manual_seed(seed)
    n, m = (5, 5) if seed % 2 == 0 else (4, 6)
    P = random_sparse_plan(n, m, 0.7, gen)
    D = torch.rand(n, m, generator=gen, dtype=torch.float64)
    for cost in (None, D):
        ref = brute_force(P, cost)
        if ref is None:
            continue
        fn = None if cost is None else (lambda r, c: D[r, c])
        val = lambda cols: sum(float(D[i, j]) if cost is not None else -float(P[i, j]) for i, j in enumerate(cols))
        for plan in (P.to_sparse(), P):  # a dense plan without cost is decoded as a matrix
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = M.to_permutation(plan, fn, **solver)
            assert abs(val(got.tolist()) - val(ref)) < 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_distinct_row_maxima_skip_the_assignment_solver(seed, monkeypatch):
    gen = torch.Generator().manual_seed(seed)
    n, m = (6, 6) if seed % 2 == 0 else (5, 7)
    P = random_sparse_plan(n, m, 0.8, gen)
    perm = torch.randperm(m, generator=gen)[:n]
    P[torch.arange(n), perm] = 2.0 + torch.rand(n, generator=gen, dtype=torch.float64)  # row maxima
    ref = brute_force(P)

    def no_solver(*args, **kwargs):
        raise AssertionError("the assignment solver ran")

    monkeypatch.setattr(decoding, "linear_sum_assignment", no_solver)
    monkeypatch.setattr(M, "sparse_assignment", no_solver)
    got = M.to_permutation(P.to_sparse())
    assert got.tolist() == perm.tolist() == list(ref)
    assert M.to_permutation(P).tolist() == perm.tolist()  # dense, as a matrix
    # colliding row maxima need the solver, and it finds the optimum
    P[1, perm[0]] = 5.0
    monkeypatch.undo()
    got = M.to_permutation(P.to_sparse())
    ref = brute_force(P)
    assert abs(sum(float(P[i, j]) for i, j in enumerate(got.tolist()))
               - sum(float(P[i, j]) for i, j in enumerate(ref))) < 1e-9


def test_to_permutation_more_rows_than_columns(solver):
    P = torch.tensor([[0.9, 0.1], [0.8, 0.0], [0.0, 0.7]], dtype=torch.float64)
    assert M.to_permutation(P, **solver).tolist() == [0, -1, 1]  # 0.9 + 0.7 beats 0.8 + 0.7 and 0.1 + 0.8


def test_exact_ties_decode_quickly(solver):
    # structurally equivalent nodes give identical rows; scipy's LAPJVsp once stalled for 40 s on such plans
    gen = torch.Generator().manual_seed(0)
    base = torch.rand(8, 40, generator=gen, dtype=torch.float64)
    P = base.repeat(5, 1)  # 40 rows, each repeated five times
    perm = M.to_permutation(P, **solver)
    assert sorted(perm.tolist()) == list(range(40))


def test_sparse_support_below_the_limit_uses_the_dense_solver(monkeypatch):
    # the sparse solver stalled for minutes on a banded plan's support (12-20% of the pairs, n = 2000)
    gen = torch.Generator().manual_seed(3)
    P = random_sparse_plan(30, 30, 0.1, gen)
    P[torch.arange(30), torch.randperm(30, generator=gen)] = 0.5  # a full matching inside the support
    P[torch.arange(30), torch.arange(30)] = 0.4
    D = torch.rand(30, 30, generator=gen, dtype=torch.float64)

    def no_sparse(*args, **kwargs):
        raise AssertionError("the sparse solver ran")

    monkeypatch.setattr(M, "sparse_assignment", no_sparse)
    for cost in (None, lambda r, c: D[r, c]):
        perm = M.to_permutation(P.to_sparse(), cost)
        assert sorted(perm.tolist()) == list(range(30))


def test_non_finite_plan_is_an_error(solver):
    P = torch.tensor([[0.5, float("nan")], [0.2, 0.3]])
    for plan in (P, P.to_sparse()):
        with pytest.raises(ValueError, match="non-finite"):
            M.to_permutation(plan)


def test_fallback_when_support_has_no_matching(solver):
    P = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    with pytest.warns(M.DecodingWarning, match="1 of 3"):
        perm = M.to_permutation(P, **solver)
    assert sorted(perm.tolist()) == [0, 1, 2] and perm[2] == 2


def test_greedy_assignment_beyond_the_dense_limit(monkeypatch):
    monkeypatch.setattr(M, "_DENSE_LIMIT", 0)  # every plan counts as large

    def no_solver(*args, **kwargs):
        raise AssertionError("an exact solver ran")

    monkeypatch.setattr(decoding, "linear_sum_assignment", no_solver)
    monkeypatch.setattr(M, "sparse_assignment", no_solver)
    gen = torch.Generator().manual_seed(8)
    P = random_sparse_plan(12, 12, 0.5, gen)
    P[torch.arange(12), torch.randperm(12, generator=gen)] = 0.3  # a full matching inside the support
    D = torch.rand(12, 12, generator=gen, dtype=torch.float64)
    for cost, score in ((None, P), (lambda i, j: D[i, j], -D)):
        with warnings.catch_warnings():  # greedy may leave a row without a free candidate
            warnings.simplefilter("ignore", M.DecodingWarning)
            got = M.to_permutation(P.to_sparse(), cost, candidates=12)
        # the greedy order: cheapest (largest) stored entry first, row and column still free
        ref = [-1] * 12
        pairs = sorted(((-float(score[i, j]), i, j) for i, j in P.nonzero().tolist()))
        for _, i, j in pairs:
            if ref[i] < 0 and j not in ref:
                ref[i] = j
        free = iter(sorted(set(range(12)) - set(ref)))
        ref = [j if j >= 0 else next(free) for j in ref]  # free rows take the free columns in order
        assert got.tolist() == ref and sorted(ref) == list(range(12))
    monkeypatch.undo()
    for plan in (P, P.to_sparse()):  # named whatever the path
        with pytest.raises(ValueError, match="assignment"):
            M.to_permutation(plan, assignment="hungarian")
    # greedy asked for below the limit, on a dense plan too
    ref = M.greedy_matching(P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", M.DecodingWarning)
        got = M.to_permutation(P, assignment="greedy")
    assert got[ref >= 0].tolist() == ref[ref >= 0].tolist()


def test_hits_and_argmax_against_dense(gen):
    P = random_sparse_plan(30, 30, 0.3, gen)
    y = torch.stack([torch.arange(30), torch.randperm(30, generator=gen)])
    for k in (1, 3, 5):
        # pessimistic rank: every other entry of the row tied with the true one ranks above it
        ref = sum(int((P[i] >= P[i, j]).sum()) - 1 < k and P[i, j] > 0 for i, j in y.t().tolist()) / 30
        assert M.hits_at_k(P.to_sparse(), y, k) == pytest.approx(ref)
        assert M.hits_at_k(P, y[1], k) == pytest.approx(ref)
    nonempty = P.sum(1) > 0
    assert torch.equal(M.row_argmax(P.to_sparse())[nonempty], P.argmax(1)[nonempty])
    pred = M.row_argmax(P)
    assert M.perm_accuracy(P, y, "argmax") == pytest.approx(float((pred[y[0]] == y[1]).double().mean()))
    with pytest.raises(ValueError, match="decoder"):
        M.perm_accuracy(P, y, "greedy")


def test_hits_never_count_ties_as_hits():
    n = 50
    flat = torch.full((n, n), 1.0 / n ** 2, dtype=torch.float64)
    y = torch.arange(n)
    assert M.hits_at_k(flat, y, 1) == 0.0 and M.hits_at_k(flat, y, n - 1) == 0.0
    assert M.hits_at_k(flat, y, n) == 1.0
    two = torch.zeros(n, n, dtype=torch.float64)
    two[y, y] = 1.0
    two[y, (y + 1) % n] = 1.0  # the true entry tied with one other: a hit at k = 2, not at k = 1
    assert M.hits_at_k(two, y, 1) == 0.0 and M.hits_at_k(two.to_sparse(), y, 2) == 1.0


def test_on_transport_plans(gen):
    s = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    t = s[:, torch.randperm(40, generator=gen)] + 0.01 * torch.randn(3, 40, generator=gen, dtype=torch.float64)
    plan = sinkhorn_banded(s, t, gamma=0.05, temperature="rank")
    dense = plan.to_dense().mean(0)
    torch.testing.assert_close(plan.averaged().to_dense(), dense)
    assert M.plan_entropy(plan) == pytest.approx(float(-torch.special.xlogy(dense, dense).sum()))
    single = sinkhorn_banded(s[0], t[0], gamma=0.05, temperature="rank")
    torch.testing.assert_close(M.row_argmax(single), single.to_dense().argmax(1))
    torch.testing.assert_close(M.row_argmax(plan), dense.argmax(1))


def test_top_per_row_keeps_the_largest():
    gen = torch.Generator().manual_seed(3)
    P = random_sparse_plan(30, 20, 0.6, gen).to_sparse().coalesce()
    (rows, cols), vals = P.indices(), P.values()
    r, c, v = M.top_per_row(rows, cols, vals, 30, 4)
    dense = P.to_dense()
    for i in range(30):
        row = dense[i][dense[i] > 0]
        kept = v[r == i]
        assert kept.numel() == min(4, row.numel())
        assert torch.equal(torch.sort(kept, descending=True).values, torch.sort(row, descending=True).values[:4])
        assert torch.equal(dense[i, c[r == i]], kept)


def test_candidates_restrict_the_assignment(solver):
    ran = 0
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        P = random_sparse_plan(6, 6, 0.9, gen)
        D = torch.rand(6, 6, generator=gen, dtype=torch.float64)
        (rows, cols), vals = P.to_sparse().indices(), P.to_sparse().values()
        # with a cost: the three cheapest stored entries of each row, then brute force on them
        r, c, _ = M.top_per_row(rows, cols, -D[rows, cols], 6, 3)
        restricted = torch.zeros_like(P)
        restricted[r, c] = P[r, c]
        ref = brute_force(restricted, D)
        # without: the three largest
        r, c, v = M.top_per_row(rows, cols, vals, 6, 3)
        largest = torch.zeros_like(P)
        largest[r, c] = v
        ref_plan = brute_force(largest)
        if ref is None or ref_plan is None:
            continue  # no full matching on three candidates per row
        got = M.to_permutation(P.to_sparse(), lambda i, j: D[i, j], candidates=3, **solver)
        cost = lambda cols: sum(float(D[i, j]) for i, j in enumerate(cols))
        assert abs(cost(got.tolist()) - cost(ref)) < 1e-9
        got = M.to_permutation(P.to_sparse(), candidates=3, **solver)
        weight = lambda cols: sum(float(P[i, j]) for i, j in enumerate(cols))
        assert abs(weight(got.tolist()) - weight(ref_plan)) < 1e-9
        ran += 1
    assert ran >= 10
    with pytest.raises(ValueError, match="candidates"):
        M.to_permutation(P, candidates=0)


@pytest.mark.parametrize("seed", range(6))
def test_greedy_matching_is_maximal_and_at_least_half_optimal(seed):
    gen = torch.Generator().manual_seed(seed)
    n, m = (5, 5) if seed % 2 == 0 else (4, 6)
    P = random_sparse_plan(n, m, 0.7, gen)
    got = M.greedy_matching(P.to_sparse()).tolist()
    matched = [j for j in got if j >= 0]
    assert len(set(matched)) == len(matched) and all(P[i, j] > 0 for i, j in enumerate(got) if j >= 0)
    free_cols = set(range(m)) - set(matched)
    # maximal: no stored entry joins a free row to a free column
    assert not any(P[i, j] > 0 for i in range(n) if got[i] < 0 for j in free_cols)
    # the largest entry is always taken, and the weight is at least half the optimum
    i, j = divmod(int(P.argmax()), m)
    assert got[i] == j
    ref = brute_force(P)
    if ref is not None:
        weight = lambda cols: sum(float(P[i, j]) for i, j in enumerate(cols) if j >= 0)
        assert weight(got) >= 0.5 * weight(ref) - 1e-12


def test_greedy_matching_breaks_ties_in_row_major_order():
    P = torch.ones(3, 3)
    assert M.greedy_matching(P).tolist() == [0, 1, 2]
    assert M.greedy_matching(torch.tensor([[1.0, 2.0], [2.0, 1.0]])).tolist() == [1, 0]
