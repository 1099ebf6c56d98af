import numpy as np
import pytest
import torch


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
