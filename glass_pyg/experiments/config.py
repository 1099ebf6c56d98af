r"""Typed experiment configs, loaded from YAML with strict validation.

A config has the sections of the reference GLASS configs: ``data``,
``model.manifold`` *or* ``model.graph``, ``ot``, ``train``, ``log``, ``seed``
and ``exp_name``. Unknown keys, wrong types and out-of-range values raise
:class:`ConfigError` naming the key and the file. ``--set key.path=value``
overrides are applied before validation.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from importlib import resources
from typing import Any

import yaml

from .._choices import CONSENSUS_MODES, GRADS, TEMPERATURES


class ConfigError(ValueError):
    """A config file or override that does not validate."""


@dataclass(frozen=True)
class SphereData:
    """``data`` of an S^2 experiment: the pair's size, noise and rotation."""
    n: int = 256
    noise_deg: float = 2.0
    rotation: bool = False
    max_rotation_deg: float | None = None
    distribution: str = "uniform"
    num_clusters: int = 4
    kappa: float = 20.0
    num_pairs: int = 1  #: pairs of the run (one projection trained over all; split across torchrun processes)


@dataclass(frozen=True)
class GraphData:
    """``data`` of a graph experiment: the SBM and its rewiring."""
    n: int = 400
    blocks: int = 3
    p_in: float = 0.15
    p_out: float = 0.02
    rewire_prob: float = 0.0
    planted_perm: bool = True
    num_pairs: int = 1  #: pairs of the run (one projection trained over all; split across torchrun processes)


@dataclass(frozen=True)
class ManifoldModel:
    """``model.manifold``: the sphere projection and the rotation stage."""
    K: int = 8
    chart_radius_deg: float = 20.0
    gate_mode: str = "tie"
    gate_c_per_sqrtk_deg: float = 45.0
    init_u_scale: float = 0.2
    learn_rotation: bool | None = None  #: default: on when the data are rotated
    train_rotation: bool = False  #: keep training the aligned rotation with the lifted loss
    geometry: str = "torch"


@dataclass(frozen=True)
class GraphModel:
    """``model.graph``: diffusion features and the consensus stage."""
    tau: float = 0.5
    cheby_degree: int = 12
    feat_dim: int = 32
    #: GW consensus stage: "auto" (where the refined GLASS matching keeps under half the edges), "always", "never"
    consensus: str = "auto"


@dataclass(frozen=True)
class OTConfig:
    """``ot``: the 1-D solver's options."""
    use_banded: bool = True
    band_eps: float = 1e-6
    gamma: float = 0.05
    max_iter: int = 200
    tol: float = 1e-6
    temperature: str = "absolute"
    grad: str = "implicit"

    def solver_options(self):
        """The section as the solver's :class:`~glass_pyg.ot.SolverOptions` (``use_banded`` picks the solver)."""
        from ..ot.options import SolverOptions
        return SolverOptions(gamma=self.gamma, temperature=self.temperature, max_iter=self.max_iter, tol=self.tol,
                             band_eps=self.band_eps, grad=self.grad)


@dataclass(frozen=True)
class TrainConfig:
    """``train``: optimiser, steps, annealing, evaluation and early stop."""
    lr: float = 1e-3
    steps: int = 400
    slices: int = 2
    anneal_gamma: bool = True
    gamma_decay: float = 0.98
    gamma_min: float = 0.01
    eval_every: int = 10
    warm_start: bool = True
    stop_when_stable: int = 2  #: stop once this many eval rows in a row give the same matching (0: never)


@dataclass(frozen=True)
class LogConfig:
    """``log``: where run folders go and how often checkpoints are written."""
    out_dir: str = "runs"
    save_every: int = 50


@dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment config (the YAML layout, typed)."""
    kind: str  #: "manifold" or "graph"
    data: SphereData | GraphData
    model: ManifoldModel | GraphModel
    ot: OTConfig = field(default_factory=OTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    seed: int = 0
    exp_name: str = "glass"

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in the YAML layout (what ``config.json`` holds)."""
        out = {"data": dataclasses.asdict(self.data), "model": {self.kind: dataclasses.asdict(self.model)},
               "ot": dataclasses.asdict(self.ot), "train": dataclasses.asdict(self.train),
               "log": dataclasses.asdict(self.log), "seed": self.seed, "exp_name": self.exp_name}
        return out


_RANGES: dict[str, tuple[float, float, bool]] = {  # key: (low, high, low inclusive)
    "n": (2, math.inf, True), "num_pairs": (1, math.inf, True), "noise_deg": (0, 90, True),
    "max_rotation_deg": (0, 180, False), "num_clusters": (1, math.inf, True), "kappa": (0, math.inf, False),
    "blocks": (1, math.inf, True),
    "p_in": (0, 1, True), "p_out": (0, 1, True), "rewire_prob": (0, 1, True), "K": (1, math.inf, True),
    "chart_radius_deg": (0, 180, False), "gate_c_per_sqrtk_deg": (0, math.inf, False),
    "init_u_scale": (0, math.inf, False), "tau": (0, math.inf, False), "cheby_degree": (0, math.inf, True),
    "feat_dim": (1, math.inf, True), "band_eps": (0, 1, False), "gamma": (0, math.inf, False),
    "max_iter": (1, math.inf, True), "tol": (0, math.inf, False), "lr": (0, math.inf, False),
    "steps": (0, math.inf, True), "slices": (1, math.inf, True), "gamma_decay": (0, 1, False),
    "gamma_min": (0, math.inf, False), "eval_every": (1, math.inf, True), "save_every": (1, math.inf, True),
    "stop_when_stable": (0, math.inf, True),
}
_CHOICES = {"distribution": ("uniform", "vmf"), "gate_mode": ("fixed", "tie", "learn"),
            "geometry": ("torch", "geomstats"), "temperature": TEMPERATURES, "grad": GRADS,
            "consensus": CONSENSUS_MODES}


def _coerce(value: Any, annotation: str, key: str, where: str) -> Any:
    optional = "None" in annotation
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: {key} must not be empty")
    base = annotation.replace(" | None", "")
    if base == "bool":
        if isinstance(value, bool):
            return value
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base == "str":
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: {key} must be {base}, got {value!r}")


def _section(cls: type, raw: Any, prefix: str, where: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {prefix} must be a mapping, got {raw!r}")
    known = {f.name: f for f in fields(cls)}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {prefix}.{key} (known: {', '.join(sorted(known))})")
    values = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}"
        v = _coerce(value, str(known[key].type), full, where)
        if v is not None and key in _RANGES and not isinstance(v, bool):
            lo, hi, inclusive = _RANGES[key]
            if not (math.isfinite(v) and (v >= lo if inclusive else v > lo) and v <= hi):
                bound = "[" if inclusive else "("
                raise ConfigError(f"{where}: {full}={v!r} is outside {bound}{lo}, {hi}]")
        if key in _CHOICES and v not in _CHOICES[key]:
            raise ConfigError(f"{where}: {full} must be one of {_CHOICES[key]}, got {v!r}")
        values[key] = v
    return cls(**values)


def from_dict(raw: Any, where: str = "<config>") -> ExperimentConfig:
    """Validate a config mapping (the YAML layout)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a config must be a mapping of sections")
    top = {"data", "model", "ot", "train", "log", "seed", "exp_name"}
    for key in raw:
        if key not in top:
            raise ConfigError(f"{where}: unknown key {key} (known: {', '.join(sorted(top))})")
    model = raw.get("model")
    if not isinstance(model, dict) or len(model) != 1 or next(iter(model)) not in ("manifold", "graph"):
        raise ConfigError(f"{where}: model must hold exactly one of model.manifold or model.graph")
    kind = next(iter(model))
    data_cls, model_cls = (SphereData, ManifoldModel) if kind == "manifold" else (GraphData, GraphModel)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63:
        raise ConfigError(f"{where}: seed must be an integer in [0, 2^63), got {seed!r}")
    name = raw.get("exp_name", "glass")
    if not isinstance(name, str) or not name or os.sep in name or name.startswith("."):
        raise ConfigError(f"{where}: exp_name must be a plain folder-name string, got {name!r}")
    cfg = ExperimentConfig(kind=kind, data=_section(data_cls, raw.get("data"), "data", where),
                           model=_section(model_cls, model[kind], f"model.{kind}", where),
                           ot=_section(OTConfig, raw.get("ot"), "ot", where),
                           train=_section(TrainConfig, raw.get("train"), "train", where),
                           log=_section(LogConfig, raw.get("log"), "log", where), seed=seed, exp_name=name)
    if kind == "graph" and cfg.data.blocks > cfg.data.n:
        raise ConfigError(f"{where}: data.blocks={cfg.data.blocks} exceeds data.n={cfg.data.n}")
    return cfg


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with floats in the usual spellings: ``1e-3``, ``2E5``, ``.5`` (PyYAML reads ``1e-3`` as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                 |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                 |[-+]?\.(?:inf|Inf|INF)
                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _yaml(text: Any, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str], where: str) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a config mapping."""
    out = _copy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, text = item.split("=", 1)
        _set(out, path.strip(), _yaml(text, f"override {item!r}") if text.strip() else None, where)
    return out


def _set(raw: dict[str, Any], path: str, value: Any, where: str) -> None:
    keys = path.split(".")
    node = raw
    for k in keys[:-1]:
        if k not in node:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise ConfigError(f"{where}: override {path} goes through {k}, which is not a section")
        node = node[k]
    node[keys[-1]] = value


def _copy(x: Any) -> Any:
    return {k: _copy(v) for k, v in x.items()} if isinstance(x, dict) else x


def _templates() -> list[str]:
    root = resources.files("glass_pyg") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml") and p.name != "grids.yaml")


def shipped_configs() -> list[str]:
    """Names of the shipped configs: the base templates, then every grid point (``_auto_*``)."""
    from .grids import grid_points
    return _templates() + list(grid_points())


def describe_configs() -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
    """``(rows, grids)``: a ``(name, kind, grid, what it varies)`` row per shipped config; what each grid studies."""
    from .grids import grid_points
    kinds, rows = {}, []
    for name in _templates():
        with open(resolve_path(name), encoding="utf-8") as fh:
            text = fh.read()
        raw = _yaml(text, name) or {}
        model = raw.get("model") if isinstance(raw, dict) else None
        kinds[name] = next(iter(model)) if isinstance(model, dict) and model else "?"
        first = text.split("\n", 1)[0].strip()
        rows.append((name, kinds[name], "-", first.lstrip("# ") if first.startswith("#") else "base template"))
    grids = {}
    for point in grid_points().values():
        rows.append((point.name, kinds.get(point.base, "?"), point.grid, point.varies()))
        grids[point.grid] = f"{point.about} (on {point.base})"
    return rows, grids


def resolve_path(name_or_path: str) -> str:
    """A config file path from a path or a base template's name (with or without ``.yaml``)."""
    if os.path.isfile(name_or_path):
        return name_or_path
    name = name_or_path[:-5] if name_or_path.endswith(".yaml") else name_or_path
    if name in _templates():
        return str(resources.files("glass_pyg") / "configs" / f"{name}.yaml")
    raise ConfigError(f"no config file or shipped config named {name_or_path!r} "
                      f"(see `glass-pyg configs` for the shipped ones)")


def _read(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return _yaml(text, path) or {}


def load_config(name_or_path: str, overrides: list[str] | None = None) -> ExperimentConfig:
    """Load, override and validate a config: a file, a base template or a grid point by name."""
    from .grids import grid_points
    point = None if os.path.isfile(name_or_path) else grid_points().get(name_or_path.removesuffix(".yaml"))
    if point is not None:
        path = resolve_path(point.base)
        raw = _read(path)
        for key, value in point.overrides().items():
            _set(raw, key, value, path)
        where = f"{point.name} (grid {point.grid} of grids.yaml on {point.base}.yaml)"
    else:
        where = path = resolve_path(name_or_path)
        raw = _read(path)
    return from_dict(apply_overrides(raw, overrides or [], where), where)
