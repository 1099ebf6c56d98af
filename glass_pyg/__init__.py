r"""glass-pyg: differentiable geometric alignment (GLASS) for PyTorch Geometric."""
from . import datasets, losses, metrics, nn, ot

__version__ = "0.1.0"
__all__ = ["datasets", "losses", "metrics", "nn", "ot", "__version__"]
