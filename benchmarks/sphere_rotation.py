"""The S^2 rotation stage: accuracy and time by size, and the basin of the sliced cost by slice family.

    python benchmarks/sphere_rotation.py scale --sizes 256 1024 4096 16384 --seeds 0 1 2 3 4 5 6 7 8 9
    python benchmarks/sphere_rotation.py scale --sizes 100000 --seeds 0 1 2 --no-match
    python benchmarks/sphere_rotation.py basin --n 512 --seeds 0 1 2 3 4

``scale``: Haar-rotated SpherePairDataset pairs (2 deg noise), uniform and vMF
(4 clusters, kappa 20); per run the start's, the descended and the polished
rotation error, the accuracy of ``align_sphere``'s matching next to exact
assignment with the true rotation undone (the ceiling), and the seconds of
each stage, on one torch thread. ``basin``: from starts 30-150 degrees off the
truth, how often 150 descent steps end within 2 degrees, for linear slices
(exact sort; entropic banded Sinkhorn) and for GLASS's gated log-map
projections (SphereProjection, K = 8, random anchors) as the slices.
Writes benchmarks/results/sphere_rotation_{scale,basin}.{csv,md}.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time

import torch

from glass_pyg.datasets import SpherePairDataset
from glass_pyg.geometry.rotation import rotation_error_deg, so3_exp
from glass_pyg.geometry.sliced import descend_rotation, fibonacci_directions
from glass_pyg.nn import SphereProjection
from glass_pyg.sphere_alignment import align_sphere, match_points, polish_rotation, start_rotations
from harness.common import machine


def _pair(n, seed, dist):
    p = SpherePairDataset(n=n, rotation=True, seed=seed, distribution=dist)[0]
    return p.pos_s.double(), p.pos_t.double(), p.rotation[0].double(), p.y[1]


def scale_row(n, seed, dist, match):
    x, y, R, truth = _pair(n, seed, dist)
    t0 = time.perf_counter()
    starts, _ = start_rotations(x, y, directions=3)
    t1 = time.perf_counter()
    res = align_sphere(x, y, polish_rounds=0, match=False)  # the same starts again, then screen and descend
    t2 = time.perf_counter()
    row = {"n": n, "distribution": dist, "seed": seed,
           "start_err_deg": float(rotation_error_deg(res.start_rotation, R)),
           "descent_err_deg": float(rotation_error_deg(res.rotation, R)),
           "start_s": t1 - t0, "descent_s": t2 - t1 - (t1 - t0)}
    if match:
        Rp, perm = polish_rotation(x, y, res.rotation)
        t3 = time.perf_counter()
        ceiling = match_points(x, y @ R)
        row.update(polished_err_deg=float(rotation_error_deg(Rp, R)), polish_match_s=t3 - t2,
                   total_s=t3 - t1, accuracy=float((perm == truth).double().mean()),
                   ceiling=float((ceiling == truth).double().mean()))
    else:
        row["total_s"] = t2 - t1
    return row


class GatedSlices:
    """Sliced cost with GLASS's gated log-map projections as the slices (fixed random anchors)."""

    def __init__(self, x, y, slices, seed):
        self.f = SphereProjection(K=8, slices=slices, generator=torch.Generator().manual_seed(seed)).double()
        self.y = y
        with torch.no_grad():
            self.sx = self.f(x).t().sort(-1).values

    def __call__(self, R):
        """The sliced cost of every candidate rotation in ``R`` ``(k, 3, 3)``."""
        out = []
        for k in range(R.size(0)):
            sy = self.f(self.y @ R[k]).t().sort(-1).values
            out.append(((sy - self.sx) ** 2).mean())
        return torch.stack(out)


def _descend(cost_fn, R0, steps=150, lr=0.03):
    omega = torch.zeros(R0.size(0), 3, dtype=R0.dtype, requires_grad=True)
    opt = torch.optim.Adam([omega], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.01)
    for _ in range(steps):
        c = cost_fn(so3_exp(omega) @ R0)
        opt.zero_grad()
        c.sum().backward()
        opt.step()
        sched.step()
    return (so3_exp(omega) @ R0).detach()


def basin_rows(n, seeds, angles, dist):
    rows = []
    for seed in seeds:
        x, y, R, _ = _pair(n, seed, dist)
        g = torch.Generator().manual_seed(1000 + seed)
        axes = torch.nn.functional.normalize(torch.randn(len(angles), 3, generator=g, dtype=torch.float64), dim=1)
        R0 = torch.stack([so3_exp(a * math.radians(t)) @ R for a, t in zip(axes, angles)])
        dirs = fibonacci_directions(8)
        families = {
            "linear, sort": lambda: descend_rotation(x, y, R0, directions=dirs, steps=150, lr=0.03)[0],
            "linear, banded sinkhorn": lambda: descend_rotation(x, y, R0, directions=dirs, steps=150, lr=0.03,
                                                               engine="sinkhorn", gamma=1.0)[0],
            "gated log-map, sort": lambda: _descend(GatedSlices(x, y, 8, seed), R0),
        }
        for name, fn in families.items():
            t0 = time.perf_counter()
            found = fn()
            sec = time.perf_counter() - t0
            for k, t in enumerate(angles):
                err = float(rotation_error_deg(found[k], R))
                rows.append({"slices": name, "n": n, "distribution": dist, "seed": seed, "start_deg": t,
                             "end_err_deg": err, "success": err < 2.0, "seconds_all_starts": sec})
    return rows


def _write(rows, name, header, table):
    os.makedirs("benchmarks/results", exist_ok=True)
    path = f"benchmarks/results/{name}"
    with open(path + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(path + ".md", "w") as fh:
        fh.write(header + "\n\n" + table)
    print(table)
    print(f"wrote {path}.csv and .md")


def _med(v):
    v = [x for x in v if x is not None]
    return statistics.median(v) if v else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["scale", "basin"])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--distributions", nargs="+", default=["uniform", "vmf"])
    p.add_argument("--no-match", action="store_true", help="rotation stage only (no polish, no matching)")
    p.add_argument("--name")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    cmd = f"`python benchmarks/sphere_rotation.py {' '.join(argv or sys.argv[1:])}`"
    header = (f"# S^2 rotation stage ({a.mode})\n\n{cmd}\n\n"
              f"Machine: {machine()}, one torch thread, {time.strftime('%Y-%m-%d')}.")
    if a.mode == "scale":
        rows = []
        for n in a.sizes:
            for dist in a.distributions:
                for seed in a.seeds:
                    rows.append(scale_row(n, seed, dist, not a.no_match))
                    print(rows[-1], flush=True)
        cols = ["start_err_deg", "descent_err_deg", "polished_err_deg", "accuracy", "ceiling", "start_s",
                "descent_s", "polish_match_s", "total_s"]
        cols = [c for c in cols if c in rows[0]]
        lines = ["| n | distribution | runs | success (< 0.5 deg) | worst err (deg) | "
                 + " | ".join(f"median {c}" for c in cols) + " |", "|" + "---|" * (5 + len(cols))]
        for n in a.sizes:
            for dist in a.distributions:
                rs = [r for r in rows if r["n"] == n and r["distribution"] == dist]
                final = [r.get("polished_err_deg", r["descent_err_deg"]) for r in rs]
                lines.append(f"| {n} | {dist} | {len(rs)} | {sum(e < 0.5 for e in final)}/{len(rs)} | "
                             f"{max(final):.3g} | " + " | ".join(f"{_med([r.get(c) for r in rs]):.4g}" for c in cols)
                             + " |")
        _write(rows, a.name or "sphere_rotation_scale", header, "\n".join(lines) + "\n")
    else:
        angles = [30, 60, 90, 120, 150]
        rows = []
        for dist in a.distributions:
            rows += basin_rows(a.n, a.seeds, angles, dist)
        lines = ["| slices | distribution | " + " | ".join(f"from {t} deg" for t in angles)
                 + " | median seconds (all starts) |", "|" + "---|" * (3 + len(angles))]
        for name in dict.fromkeys(r["slices"] for r in rows):
            for dist in a.distributions:
                rs = [r for r in rows if r["slices"] == name and r["distribution"] == dist]
                cells = []
                for t in angles:
                    sel = [r for r in rs if r["start_deg"] == t]
                    cells.append(f"{sum(r['success'] for r in sel)}/{len(sel)}")
                lines.append(f"| {name} | {dist} | " + " | ".join(cells)
                             + f" | {_med([r['seconds_all_starts'] for r in rs]):.3g} |")
        _write(rows, a.name or "sphere_rotation_basin", header + f" n = {a.n}; success: within 2 deg after 150 steps.",
               "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    sys.exit(main())
