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
