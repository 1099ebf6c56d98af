r"""Geometry: graph heat kernels (Chebyshev) and the sphere's maps and rotations."""
from .heat import heat_chebyshev_coefficients, sym_norm_operator
from .rotation import random_rotation, rotation_angle, rotation_error_deg, so3_exp, so3_log
from .sphere import exp_map, geodesic_distance, log_map, normalize, pairwise_geodesic_distance, project_tangent

__all__ = ["heat_chebyshev_coefficients", "sym_norm_operator", "random_rotation", "rotation_angle",
           "rotation_error_deg", "so3_exp", "so3_log", "exp_map", "geodesic_distance", "log_map", "normalize",
           "pairwise_geodesic_distance", "project_tangent"]
