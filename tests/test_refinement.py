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
    best = float(W[torch.arange(40), torch.as_tensor(col)].sum())
    assert float(W[torch.arange(40), res.perm].sum()) == pytest.approx(best)


def test_matching_votes_with_unmatched_nodes_brute_force():
    from glass_pyg.refinement import _adjacency, _matching_votes
    d, truth = _pair(n=40, r=0.1, seed=4)
    perm = _partly_right(truth, 0.5, seed=3)
    perm[::7] = -1  # unmatched sources vote for nothing
    a_s, a_t = _adjacency(d.edge_index_s, 40, "s"), _adjacency(d.edge_index_t, 40, "t")
    A, B = a_s.toarray(), a_t.toarray()
    W = torch.tensor([[sum(B[j, perm[k]] for k in range(40) if A[i, k] and perm[k] >= 0) for j in range(40)]
                      for i in range(40)], dtype=torch.float32)
    cache = {}
    torch.testing.assert_close(_matching_votes(a_s, perm.numpy(), a_t, cache), W, rtol=0, atol=0)
    # a few nodes change partner (one becomes unmatched, one matched): the votes are updated in place
    perm2 = perm.clone()
    perm2[[1, 2]] = perm[[2, 1]]
    perm2[3], perm2[0] = -1, perm[3]
    W2 = _matching_votes(a_s, perm2.numpy(), a_t, {})
    assert not torch.equal(W2, W)
    torch.testing.assert_close(_matching_votes(a_s, perm2.numpy(), a_t, cache), W2, rtol=0, atol=0)


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


def test_candidate_votes_are_the_votes_restricted():
    # brute force: one round's votes on the candidate pairs (and the matching's) equal A_s P A_t^T there
    import numpy as np

    from glass_pyg.refinement import _adjacency, _candidate_votes, _perm_matrix
    d, truth = _pair(n=60, r=0.1, seed=4)
    init = _partly_right(truth, 0.4, seed=5)
    a_s, a_t = _adjacency(d.edge_index_s, 60, "s"), _adjacency(d.edge_index_t, 60, "t")
    full = (a_s @ _perm_matrix(init.numpy(), 60, 60) @ a_t.T).toarray()
    g = torch.Generator().manual_seed(1)
    rows, cols = torch.randint(0, 60, (2, 300), generator=g).numpy()
    votes = _candidate_votes(a_s, _perm_matrix(init.numpy(), 60, 60), a_t, (rows, cols), init,
                             chunk_entries=64).to_dense().numpy()  # several chunks
    held = np.zeros((60, 60), dtype=bool)
    held[rows, cols] = True
    held[np.arange(60), init.numpy()] = True
    assert np.array_equal(votes[held], full[held] + 1.0)
    assert (votes[~held] == 0).all()


def test_all_pairs_as_candidates_is_the_full_refinement():
    d, truth = _pair(n=150, r=0.05, seed=2)
    init = _partly_right(truth, 0.2, seed=3)
    full = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(150, 150))
    cand = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(150, 150),
                           candidates=torch.ones(150, 150), candidate_k=150)
    # the same fixed point (intermediate ties may break differently: pairs without votes are
    # outside the full votes' support and inside the candidates')
    assert torch.equal(full.perm, cand.perm) and cand.converged


def test_plan_candidates_recover_the_truth():
    d, truth = _pair(n=300, r=0.05, seed=6)
    g = torch.Generator().manual_seed(2)
    plan = torch.rand(300, 300, generator=g, dtype=torch.float64)
    plan[torch.arange(300), truth] += 1.0  # the truth among each row's 12 largest entries
    init = _partly_right(truth, 0.15, seed=7)
    res = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300),
                          candidates=plan.to_sparse(), candidate_k=12)
    assert matching_accuracy(res.perm, d.y) > 0.95
    with pytest.raises(ValueError, match="candidates has shape"):
        refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300), candidates=plan[:10])
    with pytest.raises(ValueError, match="candidate_k"):
        refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300), candidates=plan, candidate_k=0)


def test_greedy_rounds_on_kept_votes_recover_everything():
    # the large-graph setting: 16 votes kept per row, greedy matching each round
    d, truth = _pair(n=300, r=0.05, seed=4)
    init = _partly_right(truth, 0.1, seed=5)
    res = refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300), keep=16,
                          assignment="greedy")
    assert res.converged and matching_accuracy(res.perm, d.y) == 1.0
    with pytest.raises(ValueError, match="assignment"):
        refine_matching(init, d.edge_index_s, d.edge_index_t, num_nodes=(300, 300), assignment="hungarian")


def test_callback_sees_every_round_and_can_stop_it():
    pair = SBMPairDataset(n=200, rewire_prob=0.3, seed=0)[0]
    seen = []

    def stop_at_two(rounds, perm):
        seen.append((rounds, perm.shape, perm.device.type))
        return rounds == 2

    start = torch.randperm(200, generator=torch.Generator().manual_seed(0))  # 30% rewired: it does not settle
    res = refine_matching(start, pair.edge_index_s, pair.edge_index_t, num_nodes=(200, 200), max_rounds=10,
                          callback=stop_at_two)
    assert res.rounds == 2 and not res.converged and len(res.history) == 2
    assert seen == [(1, (200,), "cpu"), (2, (200,), "cpu")]


@pytest.mark.parametrize("keep", [1, 5, 1000])
def test_top_votes_of_a_matching_are_the_largest_of_the_brute_force_votes(keep):
    # the compiled counting kernel against the vote matrix counted pair by pair, and against scipy's product
    from glass_pyg.ot import native
    from glass_pyg.refinement import _adjacency, _matching_top_votes, _votes
    d, truth = _pair(n=60, r=0.1, seed=5)
    perm = _partly_right(truth, 0.5, seed=6)
    perm[::9] = -1
    a_s, a_t = _adjacency(d.edge_index_s, 60, "s"), _adjacency(d.edge_index_t, 60, "t")
    A, B = a_s.toarray(), a_t.toarray()
    W = [[sum(B[j, perm[k]] for k in range(60) if A[i, k] and perm[k] >= 0) for j in range(60)] for i in range(60)]
    want = {}  # the `keep` largest of each row, ties at the last going to the smaller columns
    for i in range(60):
        ranked = sorted((j for j in range(60) if W[i][j] > 0), key=lambda j: (-W[i][j], j))[:keep]
        want.update({(i, j): W[i][j] for j in ranked})
    got = _matching_top_votes(a_s, perm, a_t, keep)
    if native.status().startswith("compiled"):
        assert got is not None
    if got is not None:
        assert dict(zip(map(tuple, got.indices().t().tolist()), got.values().tolist())) == want
    p = a_s.__class__((torch.ones(int((perm >= 0).sum())).numpy(),
                       ((perm >= 0).nonzero()[:, 0].numpy(), perm[perm >= 0].numpy())), shape=(60, 60))
    scipy_votes = _votes(a_s, p, a_t, keep).coalesce()
    assert dict(zip(map(tuple, scipy_votes.indices().t().tolist()), scipy_votes.values().tolist())) == want


def test_kept_vote_rounds_give_the_same_matching_with_and_without_the_kernel():
    from glass_pyg.ot import native
    d, truth = _pair(n=300, r=0.05, seed=4)
    init = _partly_right(truth, 0.1, seed=5)
    args = (init, d.edge_index_s, d.edge_index_t, (300, 300))
    compiled = refine_matching(*args, keep=16, assignment="greedy")
    with native.disabled():
        scipy_path = refine_matching(*args, keep=16, assignment="greedy")
    assert torch.equal(compiled.perm, scipy_path.perm) and compiled.history == scipy_path.history


def test_top_votes_where_every_row_reaches_every_column():
    # dense graphs: a row's counter touches all m columns and keeps counting (the kernel's workspace bound)
    import scipy.sparse as sp

    from glass_pyg.refinement import _matching_top_votes, _votes
    g = torch.Generator().manual_seed(0)
    n = 50
    upper = torch.triu((torch.rand(n, n, generator=g) < 0.9).double(), 1)
    a = sp.csr_matrix((upper + upper.T).numpy())
    perm = torch.randperm(n, generator=g)
    p = sp.csr_matrix((torch.ones(n).numpy(), (torch.arange(n).numpy(), perm.numpy())), shape=(n, n))
    for keep in (3, n):
        got = _matching_top_votes(a, perm, a, keep)
        want = _votes(a, p, a, keep).coalesce()
        if got is not None:
            assert torch.equal(got.indices(), want.indices()) and torch.equal(got.values(), want.values())
