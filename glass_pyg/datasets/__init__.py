r"""Pair datasets for matching: SBM graph pairs and S^2 point-set pairs."""
from .pair_data import PairData
from .sbm import SBMPairDataset
from .sphere import SpherePairDataset

__all__ = ["PairData", "SBMPairDataset", "SpherePairDataset"]
