r"""glass-pyg: differentiable geometric alignment (GLASS) for PyTorch Geometric.

The subpackages load on first use (PEP 562), so ``import glass_pyg`` and the
``glass-pyg`` command's ``--help`` and ``configs`` do not import torch or
torch_geometric; ``from glass_pyg import nn`` and ``glass_pyg.align_sphere``
work as usual.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["datasets", "losses", "metrics", "nn", "ot", "align_sphere", "SphereAlignment", "match_graphs",
           "GraphMatching", "__version__"]

_SUBMODULES = ("datasets", "losses", "metrics", "nn", "ot", "geometry", "consensus", "refinement", "assignment",
               "baselines", "sphere_alignment", "graph_matching", "experiments")
_FROM = {"align_sphere": "sphere_alignment", "SphereAlignment": "sphere_alignment", "match_graphs": "graph_matching",
         "GraphMatching": "graph_matching"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _FROM:
        value = getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
