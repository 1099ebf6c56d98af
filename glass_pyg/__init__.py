r"""glass-pyg: differentiable geometric alignment (GLASS) for PyTorch Geometric."""
from . import ot

__version__ = "0.1.0"
__all__ = ["ot", "__version__"]
