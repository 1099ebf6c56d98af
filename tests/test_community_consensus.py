import numpy as np
import pytest
import torch

from glass_pyg import metrics
from glass_pyg.community_consensus import community_consensus, spectral_communities
from glass_pyg.consensus import default_epsilons, gw_consensus
from glass_pyg.datasets import SBMPairDataset
from glass_pyg.refinement import _adjacency


def _agreement(labels: np.ndarray, blocks: np.ndarray) -> float:
    """Fraction of nodes in the block that most of their community's nodes are in (one block per community)."""
    counts = np.zeros((labels.max() + 1, blocks.max() + 1), dtype=np.int64)
    np.add.at(counts, (labels, blocks), 1)
    assert len(set(counts.argmax(1).tolist())) == counts.shape[0]  # distinct blocks
    return counts.max(1).sum() / labels.size


def test_spectral_communities_recover_the_blocks():
    pair = SBMPairDataset(n=600, blocks=3, p_in=0.15, p_out=0.02, rewire_prob=0.2, seed=0)[0]
    for ei, blocks in ((pair.edge_index_s, pair.block_s), (pair.edge_index_t, pair.block_t)):
        labels = spectral_communities(_adjacency(ei, 600, "e"), seed=1)
        assert labels.dtype == np.int64 and labels.shape == (600,)
        assert labels.max() == 2 and _agreement(labels, blocks.numpy()) >= 0.99  # rewiring blurs a node or two


def test_spectral_communities_find_none_in_a_random_graph():
    g = torch.Generator().manual_seed(0)
    n = 400
    upper = torch.triu(torch.rand(n, n, generator=g) < 0.1, 1)
    ei = upper.nonzero().t()
    assert not spectral_communities(_adjacency(ei, n, "e")).any()
    with pytest.raises(ValueError, match="max_parts"):
        spectral_communities(_adjacency(ei, n, "e"), max_parts=1)


@pytest.mark.parametrize("seed", [0, 1])
def test_split_consensus_matches_a_heavily_rewired_pair(seed):
    # plans of more than 200^2 entries are not formed: the 600-node graphs are split into their three
    # communities, one community pair is aligned and the refinement carries it to the whole graphs
    n = 600
    pair = SBMPairDataset(n=n, blocks=3, p_in=0.15, p_out=0.02, rewire_prob=0.2, seed=seed)[0]
    res = gw_consensus(pair.edge_index_s, pair.edge_index_t, (n, n), split_above=200 * 200, seed=seed)
    assert res.parts == (3, 3)
    assert metrics.matching_accuracy(res.perm, pair.y) >= 0.99
    assert res.localised and res.plan.is_sparse and res.plan.shape == (n, n)
    # the plan covers one community pair only
    assert res.plan.coalesce().indices()[0].unique().numel() == 200
    whole = gw_consensus(pair.edge_index_s, pair.edge_index_t, (n, n), split_above=None, seed=seed)
    assert whole.parts == (1, 1) and not whole.plan.is_sparse
    assert res.preserved == pytest.approx(whole.preserved)


def test_no_communities_fall_back_to_the_whole_graphs():
    g = torch.Generator().manual_seed(2)
    n = 150
    upper = torch.triu(torch.rand(n, n, generator=g) < 0.2, 1)
    es = upper.nonzero().t()
    perm = torch.randperm(n, generator=g)
    et = perm[es]
    assert community_consensus(es, et, (n, n)) is None
    with pytest.warns(UserWarning, match="no community structure"):
        res = gw_consensus(es, et, (n, n), split_above=100)
    assert res.parts == (1, 1)
    assert res.preserved == pytest.approx(1.0)
    with pytest.raises(ValueError, match="split_above"):
        gw_consensus(es, et, (n, n), split_above=0)


def test_default_epsilons_add_a_colder_value_for_dense_graphs():
    base = 0.125 * 0.063 ** 2
    assert default_epsilons(0.063, 0.063, 1000, 1000) == (base,)  # the benchmark pairs at n = 1000
    cold, warm = default_epsilons(0.063, 0.063, 3000, 3000)
    assert warm == base and cold == pytest.approx(500 / 2999 ** 2) and cold < base / 2


def test_split_consensus_with_graphs_of_different_sizes():
    # the target is the source's subgraph without 30 nodes, relabelled: every kept node has its partner
    n = 600
    pair = SBMPairDataset(n=n, blocks=3, p_in=0.15, p_out=0.02, rewire_prob=0.0, seed=3)[0]
    g = torch.Generator().manual_seed(0)
    kept = torch.randperm(n, generator=g)[: n - 30].sort().values
    new_id = torch.full((n,), -1, dtype=torch.long)
    new_id[kept] = torch.randperm(kept.numel(), generator=g)
    es = pair.edge_index_s
    inside = (new_id[es[0]] >= 0) & (new_id[es[1]] >= 0)
    et = new_id[es[:, inside]]
    res = gw_consensus(es, et, (n, n - 30), split_above=200 * 200)
    assert res.parts == (3, 3) and res.perm.shape == (n,)
    right = res.perm[kept] == new_id[kept]
    assert float(right.double().mean()) >= 0.99
