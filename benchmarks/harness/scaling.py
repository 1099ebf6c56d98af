r"""Runtime scaling of one training step, split into its phases (the reference's M4 and G3 sweeps).

A step is timed as: ``features`` (graph diffusion features; none on the
sphere, where the points are the input), ``projection`` (scores of both
sides), ``ot`` (the banded solve), ``loss`` (the lifted loss on the plan's
support), ``backward`` (autograd through loss, plan and projection) and the
optimiser step; ``floor`` is what any solve must do (two sorts per slice and one
pass over the band's entries), beside it. Graphs use G3's SBM densities up to ``n = 4000`` and a
sparse SBM of average degree about 50 beyond. Each size is warmed up once and timed ``repeats`` times
(median). A series stops growing ``n`` once a step takes longer than
``max_step_s``.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from statistics import median
from typing import Any

import numpy as np
import torch

from glass_pyg import losses
from glass_pyg._optional import pyplot
from glass_pyg.datasets import SBMPairDataset, SpherePairDataset
from glass_pyg.nn import GLASS, DiffusionFeatures, GraphProjection, SphereProjection
from glass_pyg.ot import SolverOptions

from .common import Table, save_figure

PHASES = ["features_s", "projection_s", "ot_s", "loss_s", "backward_s", "step_s", "floor_s"]


@dataclass
class ScalingConfig:
    """The scaling benchmark: sizes per kind, slices, the step-time limit."""
    sphere_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 4096, 16384, 65536,
                                                             262144, 1048576])
    graph_sizes: list[int] = field(default_factory=lambda: [500, 1000, 2000, 4000, 10000, 30000, 100000])
    temperatures: list[tuple[str, float]] = field(default_factory=lambda: [("absolute", 0.05), ("rank", 1.0)])
    slices: int = 2  #: the reference's M4 and G3 use 2
    repeats: int = 3
    max_step_s: float = 60.0
    seed: int = 0


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _clock(times: dict[str, float], key: str, t0: float) -> float:
    _sync()
    t1 = time.perf_counter()
    times[key] = times.get(key, 0.0) + (t1 - t0)
    return t1


def _setup(kind: str, n: int, cfg: ScalingConfig, temperature: str, gamma: float):
    gen = torch.Generator().manual_seed(cfg.seed)
    # a training run's steady state: at rank temperature the solver refuses the last step's
    # potentials (the exact 1-D dual starts closer) and GLASS soon stops offering them, which the
    # few steps timed here would not reach
    warm = temperature == "absolute"
    if kind == "sphere":
        pair = SpherePairDataset(n=n, noise_deg=2.0, seed=cfg.seed)[0]
        proj = SphereProjection(K=8, slices=cfg.slices, gate_mode="tie", generator=gen).double()
        data = (pair.pos_s.double(), pair.pos_t.double())
        head = GLASS(proj, "sq_geodesic", options=SolverOptions(gamma=gamma, temperature=temperature),
                     warm_start=warm)
        return head, data, None, losses.squared_geodesic
    # G3's densities up to n = 4000; beyond, a sparse SBM of average degree ~50 (same in/out ratio)
    p_in, p_out = (0.15, 0.02) if n <= 4000 else (112.5 / n, 15.0 / n)
    pair = SBMPairDataset(n=n, p_in=p_in, p_out=p_out, rewire_prob=0.03, seed=cfg.seed)[0]
    proj = GraphProjection(32, cfg.slices).double()
    proj.reset_parameters(gen)
    head = GLASS(proj, "sq_euclidean", options=SolverOptions(gamma=gamma, temperature=temperature), warm_start=warm)
    return head, (pair.edge_index_s, pair.edge_index_t), DiffusionFeatures(32, 0.5, 12), losses.squared_euclidean


def time_step(kind: str, n: int, cfg: ScalingConfig, temperature: str, gamma: float) -> dict[str, Any]:
    """Median phase times of a training step at size ``n``; also band and iteration counts."""
    head, data, feat, cost = _setup(kind, n, cfg, temperature, gamma)
    opt = torch.optim.Adam(head.projection.parameters(), lr=1e-3)
    runs: list[dict[str, float]] = []
    info: dict[str, Any] = {}
    for rep in range(cfg.repeats + 1):  # the first is a warm-up
        times: dict[str, float] = {}
        _sync()
        t = start = time.perf_counter()
        if feat is not None:
            xs = feat(None, data[0], num_nodes=n, dtype=torch.float64)
            xt = feat(None, data[1], num_nodes=n, dtype=torch.float64)
        else:
            xs, xt = data
        t = _clock(times, "features_s", t)
        ss, st = head.projection(xs), head.projection(xt)
        t = _clock(times, "projection_s", t)
        plan = head._solve(ss.t(), st.t(), gamma, 0)
        t = _clock(times, "ot_s", t)
        loss = losses.lifted_loss(plan, cost(xs, xt))
        t = _clock(times, "loss_s", t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        _clock(times, "backward_s", t)
        times["step_s"] = time.perf_counter() - start
        times["floor_s"] = _floor(ss.detach(), st.detach(), plan.values.detach())
        if rep:
            runs.append(times)
        info = {"nnz": plan.nnz, "band_halfwidth": int(plan.band_halfwidth.max()),
                "iterations": plan.iterations, "converged": bool(plan.converged.all())}
        del plan, loss  # as the training loop does: a step's plan is gone before the next solve
        if times["step_s"] > cfg.max_step_s:  # too slow to repeat: report the one run
            runs = runs or [times]
            break
    row = {k: median(r[k] for r in runs) for k in PHASES}
    row.update(info)
    row["repeats"] = len(runs)
    return row


def _floor(ss: torch.Tensor, st: torch.Tensor, values: torch.Tensor) -> float:
    """What any solve must do: sort both sides' scores, every slice, and read every band entry once."""
    _sync()
    t0 = time.perf_counter()
    torch.sort(ss.t().contiguous(), dim=-1)
    torch.sort(st.t().contiguous(), dim=-1)
    values.sum()
    _sync()
    return time.perf_counter() - t0


def run(cfg: ScalingConfig, kinds: list[str], progress: Callable[[str], None] | None = None,
        on_row: Callable[[Table], None] | None = None) -> Table:
    table = Table(["kind", "temperature", "gamma", "n"], PHASES + ["nnz", "band_halfwidth", "iterations"])
    for kind in kinds:
        sizes = cfg.sphere_sizes if kind == "sphere" else cfg.graph_sizes
        for temperature, gamma in cfg.temperatures:
            done: list[dict[str, Any]] = []
            for n in sizes:
                row = {"kind": kind, "temperature": temperature, "gamma": gamma, "n": n, "status": "ok"}
                skip = _projected_limit(done, n, cfg.max_step_s)
                if skip:
                    table.add({**row, "status": "skipped", "message": skip})
                    if progress:
                        progress(f"{kind} {temperature} gamma={gamma} n={n}: skipped ({skip})")
                    break
                row.update(time_step(kind, n, cfg, temperature, gamma))
                done.append(row)
                table.add(row)
                if on_row:
                    on_row(table)
                if progress:
                    progress(f"{kind} {temperature} gamma={gamma} n={n}: step {row['step_s']:.3g} s "
                             f"(ot {row['ot_s']:.3g}, backward {row['backward_s']:.3g}), "
                             f"half-width {row['band_halfwidth']}")
                if row["step_s"] > cfg.max_step_s:
                    break
    return table


def _physical_memory() -> float:
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return math.inf


def _projected_limit(done: list[dict[str, Any]], n: int, max_step_s: float) -> str:
    r"""Why the next size would not fit, from the last two sizes' log-log growth ('' if it fits).

    A step projected over 4x ``max_step_s``, or a band whose working set (about 64 bytes
    per stored entry in float64: the solver holds logits, plan and operator in row and
    column layout; measured 62 at n = 2^18) is projected over half the machine's memory,
    is not started: at absolute temperature the band is the whole matrix, and n = 16384
    ran out of 24 GiB.
    """
    if len(done) < 2:
        return ""
    (a, b) = done[-2], done[-1]
    growth = math.log(n / b["n"]) / math.log(b["n"] / a["n"])
    t_next = b["step_s"] * (b["step_s"] / max(a["step_s"], 1e-9)) ** max(growth, 0.0)
    nnz_next = b["nnz"] * (b["nnz"] / max(a["nnz"], 1)) ** max(growth, 0.0)
    mem_next = 64.0 * nnz_next
    if mem_next > 0.5 * _physical_memory():
        return f"projected band working set {mem_next / 2**30:.0f} GiB"
    if t_next > 4 * max_step_s:
        return f"projected step {t_next:.0f} s"
    return ""


def slopes(table: Table, key: str = "step_s") -> list[dict[str, Any]]:
    """Least-squares log-log slope of ``key`` against ``n`` per series (sizes >= 1000 if there are 3)."""
    series: dict[tuple, list[tuple[int, float]]] = {}
    for r in table.rows:
        if r.get("status") == "ok":
            series.setdefault((r["kind"], r["temperature"], r["gamma"]), []).append((r["n"], r[key]))
    out = []
    for (kind, temp, gamma), pts in series.items():
        big = [p for p in pts if p[0] >= 1000]
        pts = big if len(big) >= 3 else pts
        if len(pts) < 2:
            continue
        x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
        out.append({"kind": kind, "temperature": temp, "gamma": gamma, "from_n": pts[0][0], "to_n": pts[-1][0],
                    "slope": float(np.polyfit(x, y, 1)[0])})
    return out


def plot(table: Table, path: str) -> None:
    """Log-log plot of the step time and its OT part per series, written atomically as PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[tuple, list[dict[str, Any]]] = {}
    for r in table.rows:
        if r.get("status") == "ok":
            series.setdefault((r["kind"], r["temperature"], r["gamma"]), []).append(r)
    fits = {(s["kind"], s["temperature"], s["gamma"]): s["slope"] for s in slopes(table)}
    for key, rows in series.items():
        n = [r["n"] for r in rows]
        label = f"{key[0]}, {key[1]} γ={key[2]:g}"
        if key in fits:
            label += f" (slope {fits[key]:.2f})"
        line, = ax.loglog(n, [r["step_s"] for r in rows], "o-", label=label)
        ax.loglog(n, [r["ot_s"] for r in rows], "x--", color=line.get_color(), alpha=0.6)
    ax.set_xlabel("n (points or nodes)")
    ax.set_ylabel("seconds per training step (dashed: OT solve)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def slopes_markdown(table: Table) -> str:
    rows = slopes(table)
    lines = ["| kind | temperature | gamma | n range | log-log slope of step time |", "|---|---|---|---|---|"]
    lines += [f"| {s['kind']} | {s['temperature']} | {s['gamma']:g} | {s['from_n']}-{s['to_n']} | "
              f"{s['slope']:.2f} |" for s in rows]
    return "\n".join(lines) + "\n" if rows else ""

