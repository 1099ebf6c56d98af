import pytest
import torch

from glass_pyg.datasets import SBMPairDataset
from glass_pyg.metrics import matching_accuracy
from glass_pyg.refinement import refine_matching


def _pair(n=300, r=0.05, seed=0):
    d = SBMPairDataset(n=n, rewire_prob=r, seed=seed)[0]
    truth = torch.empty(n, dtype=torch.long)
    truth[d.y[0]] = d.y[1]
    return d, truth


def _partly_right(truth, frac, seed=1):
    """A permutation that agrees with ``truth`` on a random ``frac`` of the nodes."""
    g = torch.Generator().manual_seed(seed)
    n = truth.numel()
    wrong = torch.randperm(n, generator=g)[: n - int(frac * n)]
    init = truth.clone()
    init[wrong] = truth[wrong][torch.randperm(wrong.numel(), generator=g)]
    return init


def test_truth_is_a_fixed_point():
    d, truth = _pair(r=0.0)
    res = refine_matching(truth, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300))
    assert res.converged and res.rounds == 1 and res.history == [0]
    assert torch.equal(res.perm, truth)


def test_few_correct_seeds_recover_everything():
    d, truth = _pair(n=300, r=0.05)
    init = _partly_right(truth, 0.15)
    assert matching_accuracy(init, d.y) < 0.2
    res = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300))
    assert res.converged
    assert matching_accuracy(res.perm, d.y) == 1.0


def test_soft_plan_as_votes_dense_and_sparse():
    d, truth = _pair(n=200, r=0.02)
    g = torch.Generator().manual_seed(0)
    plan = torch.rand(200, 200, generator=g, dtype=torch.float64) * 0.5
    plan[torch.arange(200), truth] += 1.0  # a noisy plan whose mass favours the truth
    plan /= plan.sum()
    dense = refine_matching(plan, d.edge_index_s, d.edge_index_t)
    sparse = refine_matching(plan.to_sparse(), d.edge_index_s, d.edge_index_t, keep=32)
    assert matching_accuracy(dense.perm, d.y) == 1.0
    assert matching_accuracy(sparse.perm, d.y) == 1.0


def test_votes_count_matched_edges_brute_force():
    # one round from a given matching equals assignment on the brute-force vote matrix
    from scipy.optimize import linear_sum_assignment
    d, truth = _pair(n=40, r=0.1, seed=3)
    init = _partly_right(truth, 0.5, seed=2)
    A = torch.zeros(40, 40)
    A[d.edge_index_s[0], d.edge_index_s[1]] = 1
    Bt = torch.zeros(40, 40)
    Bt[d.edge_index_t[0], d.edge_index_t[1]] = 1
    W = torch.zeros(40, 40)
    for i in range(40):
        for j in range(40):
            W[i, j] = sum(float(Bt[j, init[k]]) for k in range(40) if A[i, k] > 0)
    _, col = linear_sum_assignment(W.numpy(), maximize=True)
    res = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(40, 40), max_rounds=1)
    assert float(W[torch.arange(40), res.perm].sum()) == pytest.approx(float(W[torch.arange(40), torch.as_tensor(col)].sum()))


def test_bad_input_names_the_problem():
    d, truth = _pair(n=50)
    with pytest.raises(ValueError, match="num_nodes"):
        refine_matching(truth, d.edge_index_s, d.edge_index_t)
    with pytest.raises(ValueError, match="outside"):
        refine_matching(truth + 60, d.edge_index_s, d.edge_index_t, num_nodes=(50, 50))
    with pytest.raises(ValueError, match="edge_index_s"):
        refine_matching(truth, d.edge_index_s[0], d.edge_index_t, num_nodes=(50, 50))
    with pytest.raises(ValueError, match="max_rounds"):
        refine_matching(truth, d.edge_index_s, d.edge_index_t, num_nodes=(50, 50), max_rounds=0)
    with pytest.raises(ValueError, match="edge_index_t"):
        refine_matching(truth, d.edge_index_s, d.edge_index_t + 100, num_nodes=(50, 50))
