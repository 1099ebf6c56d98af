"""Optional dependencies: a missing one is an ImportError that says which extra installs it."""
from __future__ import annotations

import importlib
from types import ModuleType

_PACKAGES = {"ot": ("POT", "bench"), "matplotlib": ("matplotlib", "plot"), "torch_sparse": ("torch-sparse", "sparse")}


class MissingOptionalDependency(ImportError):
    """An optional package is not installed; the message says how to install it."""


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of the table above) or raise an ImportError naming the fix."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package, extra = _PACKAGES[module.split(".")[0]]
        raise MissingOptionalDependency(f"{purpose} needs the optional package {package}: "
                                        f"pip install 'glass-pyg[{extra}]' (or pip install {package})") from exc


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    matplotlib = require("matplotlib", "plotting (--plot, benchmark figures)")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")
