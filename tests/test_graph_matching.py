"""The graph pipeline's answer: refinement where it takes hold, consensus where it does not."""
import pytest
import torch

from glass_pyg import metrics
from glass_pyg.consensus import gw_consensus, preserved_edges
from glass_pyg.datasets import SBMPairDataset
from glass_pyg.graph_matching import match_graphs


def _truth_plan(pair, n, noise, gen):
    """A plan with a fraction of its mass on the true partners, the rest uniform."""
    plan = torch.full((n, n), (1 - noise) / n ** 2, dtype=torch.float64)
    true = torch.empty(n, dtype=torch.long)
    true[pair.y[0]] = pair.y[1]
    keep = torch.rand(n, generator=gen) < 0.2  # 20% of the rows point at their partner
    plan[torch.arange(n)[keep], true[keep]] += noise / n
    return plan, true


def test_refinement_answers_where_it_bootstraps(gen):
    n = 300
    pair = SBMPairDataset(n=n, rewire_prob=0.02, seed=1)[0]
    plan, true = _truth_plan(pair, n, 0.5, gen)
    res = match_graphs(plan, None, pair.edge_index_s, pair.edge_index_t)
    assert res.stage == "refinement" and res.consensus is None
    assert metrics.matching_accuracy(res.perm, pair.y) == 1.0
    assert res.preserved == pytest.approx(preserved_edges(true, pair.edge_index_s, pair.edge_index_t, n))
    assert res.lifted.shape == (n,) and 1 <= res.refine_rounds <= 20


def test_consensus_answers_where_refinement_cannot_and_is_reused():
    n = 400
    pair = SBMPairDataset(n=n, rewire_prob=0.2, seed=0)[0]
    uniform = torch.full((n, n), 1.0 / n ** 2)  # no information: the refinement cannot bootstrap
    res = match_graphs(uniform, None, pair.edge_index_s, pair.edge_index_t, probe_rounds=3)
    assert res.stage == "consensus" and metrics.matching_accuracy(res.perm, pair.y) >= 0.99
    assert res.refine_rounds == 3  # the consensus won: the refinement stopped at the probe
    again = match_graphs(uniform, None, pair.edge_index_s, pair.edge_index_t, reuse=res.consensus)
    assert again.consensus is res.consensus and torch.equal(again.perm, res.perm)
    never = match_graphs(uniform, None, pair.edge_index_s, pair.edge_index_t, consensus="never")
    assert never.stage == "refinement" and never.consensus is None and never.refine_rounds > 3
    assert metrics.matching_accuracy(never.perm, pair.y) < 0.1
    direct = gw_consensus(pair.edge_index_s, pair.edge_index_t, (n, n))
    assert torch.equal(direct.perm, res.perm)


def test_the_probe_stops_where_the_refinement_stalls():
    # at 20% rewiring the lifted decoding of an uninformed plan does not bootstrap: the edges kept stay flat,
    # so the probe ends at its third round instead of its eighth; a pair that bootstraps is probed longer
    n = 400
    pair = SBMPairDataset(n=n, rewire_prob=0.2, seed=0)[0]
    uniform = torch.full((n, n), 1.0 / n ** 2)
    res = match_graphs(uniform, None, pair.edge_index_s, pair.edge_index_t, probe_rounds=8)
    assert res.stage == "consensus" and res.refine_rounds == 3
    assert metrics.matching_accuracy(res.perm, pair.y) >= 0.99


@pytest.mark.parametrize("kwargs, message", [
    (dict(consensus="sometimes"), "consensus must be one of"), (dict(probe_rounds=0), "probe_rounds"),
    (dict(refine_rounds=1.5), "refine_rounds")])
def test_match_graphs_bad_input(kwargs, message):
    ei = torch.tensor([[0, 1, 2], [1, 2, 0]])
    with pytest.raises(ValueError, match=message):
        match_graphs(torch.full((3, 3), 1 / 9), None, ei, ei, **kwargs)
