"""Sphere matching quality and time: glass-pyg against assignment on the geodesic cost and entropic GW.

    python benchmarks/sphere_matching.py                      # the full grid (many hours on 2 cores)
    python benchmarks/sphere_matching.py --sizes 256 1024 --noise 2 --rotations none 10 30 haar
    python benchmarks/sphere_matching.py --quick              # n = 128, one noise level

Writes benchmarks/results/sphere_matching.{csv,md}.
"""
from __future__ import annotations

import argparse
import sys

from harness import sphere as S
from harness.common import machine, render, rerender, settings_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--noise", type=float, nargs="+")
    p.add_argument("--rotations", nargs="+", help="none, haar, or a maximum angle in degrees")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--methods", nargs="+", choices=S.METHODS)
    p.add_argument("--budget", type=float, default=600.0, help="seconds per method and instance")
    p.add_argument("--threads", type=int, help="torch threads in each worker")
    p.add_argument("--steps", type=int, help="glass training steps")
    p.add_argument("--gamma", type=float, help="glass entropic temperature")
    p.add_argument("--temperature", choices=["absolute", "rank"])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-csv", help="re-render the Markdown and the plot from a CSV of an earlier run")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="sphere_matching")
    a = p.parse_args(argv)
    if a.from_csv:
        print(rerender(a.from_csv, a.out, a.name, S.KEYS, S.METRICS, S.headline, S.plot))
        return 0
    cfg = S.SphereBenchConfig(budget_s=a.budget, threads=a.threads)
    if a.quick:
        cfg.sizes, cfg.noise, cfg.rotations = [128], [2.0], ["none", "10"]
    for key in ("sizes", "noise", "rotations", "seeds", "methods"):
        if getattr(a, key):
            setattr(cfg, key, getattr(a, key))
    for key in ("steps", "gamma", "temperature"):
        if getattr(a, key) is not None:
            setattr(cfg.glass, key, getattr(a, key))
    cmd = f"python benchmarks/sphere_matching.py {' '.join(argv or sys.argv[1:])}"
    header = (f"# Sphere matching on S^2 pairs\n\n`{cmd}`\n\nMachine: {machine()}. "
              f"{settings_line(cfg.glass, cfg.budget_s, cfg.threads)}. acc_refined = assignment with the lifted "
              "geodesic cost inside the plan's support. rotation: maximum angle of the random rotation.")
    table = S.run(cfg, progress=lambda s: print(s, flush=True),
                  on_row=lambda t: render(t, a.out, a.name, header, S.headline))
    print(render(table, a.out, a.name, header, S.headline, S.plot))
    print(f"wrote {a.out}/{a.name}.csv, .md and .png")
    return 0


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    sys.exit(main())
