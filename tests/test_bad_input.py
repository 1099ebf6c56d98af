"""Bad input gets an error that names the problem, not a raw exception, a NaN or a silent answer."""
import pytest
import torch

from glass_pyg import metrics
from glass_pyg.datasets import SBMPairDataset
from glass_pyg.nn import GLASS, DiffusionFeatures, GraphProjection
from glass_pyg.ot import sinkhorn_banded, sinkhorn_dense

S = torch.linspace(-1, 1, 20, dtype=torch.float64)
T = torch.linspace(-0.8, 1.2, 20, dtype=torch.float64)


def _double_backward():
    x = S.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(sinkhorn_banded(x, T).transport_cost(), x, create_graph=True)
    g.sum().backward()


def _head():
    return GLASS(GraphProjection(4, 2).double(), "sq_euclidean")


def _sphere():
    from glass_pyg.nn import SphereProjection
    return SphereProjection(K=4, slices=2)


X = torch.randn(10, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
ZEROS = torch.zeros(10, dtype=torch.long)

CASES = {
    "meta tensors": (lambda: sinkhorn_banded(torch.empty(20, device="meta"), torch.empty(20, device="meta")),
                     ValueError, "meta tensor"),
    "banded gamma shape": (lambda: sinkhorn_banded(S, T, gamma=torch.ones(3, dtype=torch.float64)),
                           ValueError, r"gamma must be a scalar or have shape \(1,\)"),
    "dense gamma shape": (lambda: sinkhorn_dense(torch.rand(5, 5, dtype=torch.float64),
                                                 gamma=torch.ones(3, dtype=torch.float64)),
                          ValueError, r"gamma must be a scalar or have shape \(1,\)"),
    "double backward": (_double_backward, RuntimeError, "first-order only"),
    "features num_nodes 0": (lambda: DiffusionFeatures(4)(None, torch.zeros(2, 0, dtype=torch.long), num_nodes=0),
                             ValueError, "num_nodes=0"),
    "features edge range": (lambda: DiffusionFeatures(4)(None, torch.tensor([[0, 50], [1, 2]]), num_nodes=5),
                            ValueError, r"outside \[0, 5\)"),
    "negative batch ids": (lambda: _head()(X, X, batch_s=torch.tensor([-1] * 5 + [0] * 5), batch_t=ZEROS),
                           ValueError, "batch_s holds negative pair ids"),
    "empty pair in a batch": (lambda: _head()(X, X, batch_s=torch.tensor([0] * 5 + [2] * 5),
                                              batch_t=torch.tensor([0] * 5 + [2] * 5)),
                              ValueError, "pair 1 of the batch"),
    "temperature": (lambda: GLASS(GraphProjection(4, 2), "sq_euclidean", temperature="bogus"),
                    ValueError, r"temperature must be one of \('absolute', 'rank'\), got 'bogus'"),
    "perm_accuracy y range": (lambda: metrics.perm_accuracy(torch.rand(5, 5), torch.tensor([0, 1, 2, 3, 9])),
                              ValueError, r"target indices in \[0, 9\], outside \[0, 5\)"),
    "hits y range": (lambda: metrics.hits_at_k(torch.rand(5, 5), torch.tensor([[0, 7], [1, 2]])),
                     ValueError, "source indices"),
    "matching_accuracy negative y": (lambda: metrics.matching_accuracy(torch.arange(3), torch.tensor([0, -1, 2])),
                                     ValueError, "target indices"),
    "points off the sphere": (lambda: _sphere()(torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])),
                              ValueError, "row 1 .* norm 2"),
    "NaN points": (lambda: _sphere()(torch.tensor([[0.0, 0.0, 1.0], [float("nan"), 0.0, 0.0]])),
                   ValueError, "row 1"),
    "sbm rewiring without room": (lambda: SBMPairDataset(n=10, blocks=1, p_in=1.0, p_out=0.0, rewire_prob=0.5),
                                  ValueError, "rewire_prob"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_named(name):
    fn, exc, match = CASES[name]
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("module, extra", [("matplotlib", "plot"), ("ot", "bench")])
def test_missing_optional_dependency_names_the_extra(module, extra, monkeypatch):
    import sys

    from glass_pyg._optional import pyplot, require
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ImportError, match=rf"pip install 'glass-pyg\[{extra}\]'"):
        pyplot() if module == "matplotlib" else require(module, "the entropic GW baseline")
    if module == "ot":
        from glass_pyg.baselines import graph
        with pytest.raises(ImportError, match="POT"):
            graph.entropic_gw(__import__("numpy").eye(3), __import__("numpy").eye(3))
