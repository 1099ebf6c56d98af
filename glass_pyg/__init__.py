r"""glass-pyg: differentiable geometric alignment (GLASS) for PyTorch Geometric."""
from . import datasets, losses, metrics, nn, ot
from .sphere_alignment import SphereAlignment, align_sphere

__version__ = "0.1.0"
__all__ = ["datasets", "losses", "metrics", "nn", "ot", "align_sphere", "SphereAlignment", "__version__"]
