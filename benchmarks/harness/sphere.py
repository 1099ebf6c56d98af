r"""Sphere matching benchmark: glass-pyg against assignment on the geodesic cost and Gromov-Wasserstein.

Instances are :class:`~glass_pyg.datasets.SpherePairDataset` pairs (uniform
points, tangent noise of ``noise_deg``), without rotation, with a random
rotation of at most ``10, 30, 90`` degrees, or Haar. ``glass`` is the
``manifold`` run's pipeline: the rotation stage (when the pair is rotated),
then the GLASS head trained on the aligned pair and its lifted decoding;
``glass_align`` is :func:`~glass_pyg.align_sphere` alone (rotation stage,
polish, exact assignment on the aligned pair); ``oracle_lap`` is exact
assignment on the pair with the true rotation undone (the ceiling of any
matcher); ``geodesic_lap`` assigns without undoing any rotation.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from glass_pyg import baselines as B
from glass_pyg import losses, metrics
from glass_pyg.datasets import SpherePairDataset
from glass_pyg.geometry.rotation import rotation_angle, rotation_error_deg
from glass_pyg.nn import GLASS, LearnedRotation, SphereProjection
from glass_pyg.ot import SolverOptions
from glass_pyg.sphere_alignment import align_sphere, match_points

from .common import Table, check_methods, final_accuracy, pivot, plot_panels, run_grid

METHODS = ["glass", "glass_align", "oracle_lap", "geodesic_lap", "sphere_gw"]
KEYS = ["n", "noise_deg", "rotation", "method"]
METRICS = ["acc_hungarian", "acc_argmax", "acc_refined", "rotation_err_deg", "true_angle_deg", "wall_s",
           "cpu_s", "peak_mib"]


@dataclass
class SphereGlassSettings:
    """How the sphere benchmark trains glass-pyg."""
    K: int = 8
    slices: int = 8
    gamma: float = 0.05
    temperature: str = "absolute"
    lr: float = 3e-2
    steps: int = 30


@dataclass
class SphereBenchConfig:
    """The sphere benchmark grid: sizes, noise levels, rotations, seeds, methods, budget."""
    sizes: list[int] = field(default_factory=lambda: [256, 1024, 4096, 16384])
    noise: list[float] = field(default_factory=lambda: [2.0, 5.0])
    rotations: list[str] = field(default_factory=lambda: ["none", "10", "30", "90", "haar"])
    seeds: list[int] = field(default_factory=lambda: [0])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budget_s: float = 600.0
    threads: int | None = None
    glass: SphereGlassSettings = field(default_factory=SphereGlassSettings)


def instance(n: int, noise: float, rotation: str, seed: int) -> dict[str, Any]:
    if rotation not in ("none", "haar") and not rotation.replace(".", "", 1).isdigit():
        raise ValueError(f"rotation must be 'none', 'haar' or a maximum angle in degrees, got {rotation!r}")
    rotated = rotation != "none"
    pair = SpherePairDataset(n=n, noise_deg=noise, rotation=rotated,
                             max_rotation_deg=float(rotation) if rotated and rotation != "haar" else None,
                             seed=seed)[0]
    truth = np.empty(n, dtype=np.int64)
    truth[pair.y[0].numpy()] = pair.y[1].numpy()
    R = pair.rotation[0].double()
    return {"n": n, "pos_s": pair.pos_s.double(), "pos_t": pair.pos_t.double(), "truth": truth,
            "rotated": rotated, "rotation": R, "true_angle_deg": float(torch.rad2deg(rotation_angle(R)))}


def _glass(inst: dict[str, Any], s: SphereGlassSettings) -> dict[str, Any]:
    ps, pt = inst["pos_s"], inst["pos_t"]
    proj = SphereProjection(K=s.K, slices=s.slices, generator=torch.Generator().manual_seed(0)).double()
    rot = None
    if inst["rotated"]:
        rot = LearnedRotation().double()
        rot.set_matrix(align_sphere(ps, pt, match=False).rotation.t())  # rotates the target back
        rot.omega.requires_grad_(False)
    head = GLASS(proj, cost="sq_geodesic", options=SolverOptions(gamma=s.gamma, temperature=s.temperature),
                 warm_start=True)
    opt = torch.optim.Adam(proj.parameters(), lr=s.lr)
    for _ in range(s.steps):
        out = head(ps, rot(pt) if rot is not None else pt)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        target = rot(pt) if rot is not None else pt
        out = head(ps, target)
    # exact assignment at every size: the lifted decoding is the final answer here (no refinement
    # follows); beyond n * m = 2^22 it can stall, which the worker's budget turns into "did not finish"
    res = {"perm": metrics.to_permutation(out.plan, assignment="optimal").numpy(),
           "perm_argmax": metrics.row_argmax(out.plan).numpy(),
           "perm_refined": metrics.to_permutation(out.plan, losses.squared_geodesic(ps, target),
                                                  assignment="optimal").numpy()}
    if rot is not None:
        res["rotation_err_deg"] = float(rotation_error_deg(rot.matrix().detach().T, inst["rotation"]))
    return res


def bench_one(method: str, inst: dict[str, Any], settings: SphereGlassSettings) -> dict[str, Any]:
    """Run one method on one instance and score it (the worker's entry point)."""
    w0, c0 = time.perf_counter(), time.process_time()
    if method == "glass":
        out = _glass(inst, settings)
    elif method == "glass_align":
        res = align_sphere(inst["pos_s"], inst["pos_t"])
        out = {"perm": res.perm.numpy(), "rotation_err_deg": float(rotation_error_deg(res.rotation, inst["rotation"]))}
    elif method == "oracle_lap":
        out = {"perm": match_points(inst["pos_s"], inst["pos_t"] @ inst["rotation"]).numpy()}
    elif method == "geodesic_lap":
        out = {"perm": B.geodesic_lap(inst["pos_s"], inst["pos_t"]).perm}
    elif method == "sphere_gw":
        out = {"perm": B.sphere_gw(inst["pos_s"], inst["pos_t"]).perm}
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    row: dict[str, Any] = {"wall_s": time.perf_counter() - w0, "cpu_s": time.process_time() - c0}
    truth = inst["truth"]
    for key, col in (("perm", "acc_hungarian"), ("perm_argmax", "acc_argmax"), ("perm_refined", "acc_refined")):
        if key in out:
            row[col] = float((out[key] == truth).mean())
    if "rotation_err_deg" in out:
        row["rotation_err_deg"] = out["rotation_err_deg"]
    row["true_angle_deg"] = inst["true_angle_deg"]
    return row


def run(cfg: SphereBenchConfig, progress: Callable[[str], None] | None = None,
        on_row: Callable[[Table], None] | None = None) -> Table:
    check_methods(cfg.methods, METHODS)
    cases = ((dict(n=n, noise_deg=noise, rotation=rot, seed=seed), instance(n, noise, rot, seed))
             for n in cfg.sizes for noise in cfg.noise for rot in cfg.rotations for seed in cfg.seeds)
    return run_grid(Table(KEYS, METRICS), cases, cfg.methods, bench_one,
                    cfg.glass, cfg.budget_s, cfg.threads, progress, on_row)


def headline(table: Table) -> str:
    """Per size and noise: median accuracy (and glass's rotation error) by rotation."""
    parts = []
    for n in dict.fromkeys(r["n"] for r in table.rows):
        for noise in dict.fromkeys(r["noise_deg"] for r in table.rows if r["n"] == n):
            rows = [r for r in table.rows if r["n"] == n and r["noise_deg"] == noise]
            parts.append(f"### n = {n}, noise {noise:g} deg: accuracy (glass: lifted-cost decoding)\n\n"
                         + pivot(rows, "method", "rotation", final_accuracy))
            parts.append(f"### n = {n}, noise {noise:g} deg: wall seconds\n\n"
                         + pivot(rows, "method", "rotation", lambda r: r.get("wall_s"), lambda v: f"{v:.3g}"))
            glass = [r for r in rows if r["method"] == "glass" and r.get("rotation_err_deg") is not None]
            if glass:
                rot_rows = [{"glass": q, "rotation": r["rotation"], "status": "ok", "v": r.get(key)}
                            for r in glass for q, key in (("rotation error (deg)", "rotation_err_deg"),
                                                          ("true angle (deg)", "true_angle_deg"))]
                parts.append(f"### n = {n}, noise {noise:g} deg: glass's learned rotation\n\n"
                             + pivot(rot_rows, "glass", "rotation", lambda r: r["v"], lambda v: f"{v:.2f}"))
    return "\n".join(parts)


def plot(table: Table, path: str) -> None:
    """Accuracy against rotation, one panel per size and noise, one line per method (PNG)."""
    plot_panels(table.rows, lambda r: f"n = {r['n']}, noise {r['noise_deg']:g} deg", "rotation", "method",
                final_accuracy, path, "rotation (max angle, deg)", "accuracy", categorical_x=True)
