r"""Entropic optimal transport in one dimension: dense and banded log-domain Sinkhorn."""
from ._sinkhorn_banded import sinkhorn_banded
from ._validation import ConvergenceWarning
from .dense import sinkhorn_dense
from .exact import emd_1d_cost, staircase_plan
from .options import SolverOptions
from .plan import TransportPlan

__all__ = ["sinkhorn_banded", "sinkhorn_dense", "SolverOptions", "TransportPlan", "ConvergenceWarning",
           "staircase_plan", "emd_1d_cost"]
