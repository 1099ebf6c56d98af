import os
import sys

import numpy as np
import pytest
import torch

# the benchmark harness (benchmarks/harness) is not part of the installed package: its tests import it from there
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def dense_cost(s, t):
    return (s.unsqueeze(-1) - t.unsqueeze(-2)) ** 2


def pot_plan(s, t, a, b, gamma):
    """POT's log-domain Sinkhorn run to a tight tolerance (the external reference)."""
    ot = pytest.importorskip("ot")
    C = dense_cost(s.double(), t.double()).numpy()
    P = ot.sinkhorn(a.double().numpy(), b.double().numpy(), C, float(gamma), method="sinkhorn_log",
                    numItermax=30000, stopThr=1e-10, warn=False)
    return torch.from_numpy(np.asarray(P))


def staircase_band(n, m, gamma, extra, seed=0):
    """Sorted scores of 2 slices, their staircase and reference dual, and a band ``extra`` columns wider
    than the staircase."""
    from glass_pyg.ot._band import make_band, reference_dual, staircase
    g = torch.Generator().manual_seed(seed)
    s = torch.sort(torch.randn(2, n, generator=g, dtype=torch.float64)).values
    t = torch.sort(torch.randn(2, m, generator=g, dtype=torch.float64).exp()).values
    a = torch.full((2, n), 1.0 / n, dtype=torch.float64)
    b = torch.full((2, m), 1.0 / m, dtype=torch.float64)
    stair = staircase(a, b)
    gam = torch.tensor([gamma, 3 * gamma], dtype=torch.float64)
    f0, g0 = reference_dual(s, t, stair, gam)
    band = make_band((stair.lo - extra).clamp(min=0), (stair.hi + extra).clamp(max=m - 1), m)
    return s, t, gam, band, stair, f0, g0
