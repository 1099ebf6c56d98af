r"""Torch modules: graph diffusion, projections and the GLASS alignment head."""
from .cheb_diffusion import ChebDiffusion
from .features import DiffusionFeatures
from .glass import GLASS, GLASSOutput
from .projection import GraphProjection
from .sphere_projection import LearnedRotation, SphereProjection

__all__ = ["ChebDiffusion", "DiffusionFeatures", "GraphProjection", "GLASS", "GLASSOutput",
           "SphereProjection", "LearnedRotation"]
