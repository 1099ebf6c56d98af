r"""The shipped experiment grids: base templates plus the values each grid varies (``configs/grids.yaml``).

A grid point's config is its base template with the point's values set and
``exp_name`` from the block's name template; its shipped name is
``_auto_<exp_name>`` (the names of the reference GLASS configs).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

PREFIX = "_auto_"


@dataclass(frozen=True)
class GridPoint:
    """One shipped config of a grid."""

    name: str  #: the shipped name, ``_auto_<exp_name>``
    grid: str  #: the grid's id (``M1``, ``G2``, ...)
    base: str  #: the base template's shipped name
    about: str  #: what the grid studies
    values: tuple[tuple[str, Any], ...]  #: ``(dotted key, value)`` set on the base

    def overrides(self) -> dict[str, Any]:
        """The values set on the base, ``exp_name`` included."""
        return dict(self.values) | {"exp_name": self.name[len(PREFIX):]}

    def varies(self) -> str:
        """``K=16 gamma=0.1``: the point's values by their last key component."""
        return " ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in self.values)


def _expand(gid: str, spec: Any) -> list[GridPoint]:
    where = f"grids.yaml: grid {gid}"
    if not isinstance(spec, dict) or not {"base", "about", "blocks"} <= set(spec):
        raise ValueError(f"{where} needs base, about and blocks")
    points = []
    for block in spec["blocks"]:
        keys = list(block["vary"])
        for combo in itertools.product(*(block["vary"][k] for k in keys)):
            values = tuple(zip(keys, combo))
            short = {k.rsplit(".", 1)[-1]: v for k, v in values}
            points.append(GridPoint(PREFIX + block["name"].format(**short), gid, spec["base"], spec["about"], values))
    return points


@lru_cache(maxsize=1)
def grid_points() -> dict[str, GridPoint]:
    """Every shipped grid point by name, in the file's order."""
    text = (resources.files("glass_pyg") / "configs" / "grids.yaml").read_text(encoding="utf-8")
    out: dict[str, GridPoint] = {}
    for gid, spec in yaml.safe_load(text).items():
        for point in _expand(gid, spec):
            if point.name in out:
                raise ValueError(f"grids.yaml: {point.name} is defined twice")
            out[point.name] = point
    return out
