r"""Reference matchers that glass-pyg is benchmarked against (numpy/scipy/POT, CPU)."""
from .graph import Matching, adjacency, assign, degree_profile, entropic_gw, faq, feature_lap, grampa, umeyama
from .sphere import geodesic_lap, sphere_gw

__all__ = ["Matching", "adjacency", "assign", "grampa", "umeyama", "degree_profile", "faq", "entropic_gw",
           "feature_lap", "geodesic_lap", "sphere_gw"]
