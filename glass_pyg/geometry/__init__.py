r"""Geometry: graph heat kernels (Chebyshev) and, on the sphere, maps and rotations."""
from .heat import heat_chebyshev_coefficients, sym_norm_operator

__all__ = ["heat_chebyshev_coefficients", "sym_norm_operator"]
