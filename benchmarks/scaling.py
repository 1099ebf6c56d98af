"""Runtime of a training step against n, split into features, projection, OT, loss and backward.

    python benchmarks/scaling.py                          # sphere to 2^20 points, graphs to 10^5 nodes,
                                                          # each series stops once a step exceeds --max-step
    python benchmarks/scaling.py --kinds sphere --sphere-sizes 64 256 1024 --max-step 30

Writes benchmarks/results/scaling.{csv,md} and scaling.png (log-log, with fitted slopes).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from glass_pyg.experiments.run_dir import atomic_write_text
from harness import scaling as S
from harness.common import Table, machine


def _temperature(text: str) -> tuple[str, float]:
    name, _, value = text.partition(":")
    if name not in ("absolute", "rank") or not value:
        raise argparse.ArgumentTypeError(f"expected absolute:GAMMA or rank:GAMMA, got {text!r}")
    return name, float(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kinds", nargs="+", choices=["sphere", "graph"], default=["sphere", "graph"])
    p.add_argument("--sphere-sizes", type=int, nargs="+")
    p.add_argument("--graph-sizes", type=int, nargs="+")
    p.add_argument("--temperatures", type=_temperature, nargs="+", help="e.g. absolute:0.05 rank:1")
    p.add_argument("--slices", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-step", type=float, default=60.0, help="stop a series after a step this slow (s)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="scaling")
    p.add_argument("--from-csv", help="re-render the Markdown, slopes and plot from a CSV of an earlier run")
    a = p.parse_args(argv)
    cfg = S.ScalingConfig(slices=a.slices, repeats=a.repeats, max_step_s=a.max_step)
    if a.sphere_sizes:
        cfg.sphere_sizes = a.sphere_sizes
    if a.graph_sizes:
        cfg.graph_sizes = a.graph_sizes
    if a.temperatures:
        cfg.temperatures = a.temperatures
    header = (f"# Time per training step\n\n`python benchmarks/scaling.py {' '.join(argv or sys.argv[1:])}`\n\n"
              f"Machine: {machine()}, {torch.get_num_threads()} torch threads. {cfg.slices} slices, float64, "
              f"median of {cfg.repeats} steps after a warm-up (1 when a step exceeds the limit).")
    os.makedirs(a.out, exist_ok=True)
    if a.from_csv:
        table = Table.from_csv(a.from_csv, ["kind", "temperature", "gamma", "n"],
                               S.PHASES + ["nnz", "band_halfwidth", "iterations"])
        header = open(os.path.join(a.out, f"{a.name}.md")).read().split("\n\n|")[0] \
            if os.path.exists(os.path.join(a.out, f"{a.name}.md")) else header
    else:
        table = S.run(cfg, a.kinds, progress=lambda s: print(s, flush=True),
                      on_row=lambda t: t.write(a.out, a.name, header))
    table.write(a.out, a.name, header)
    fits = S.slopes_markdown(table)
    if fits:
        md = os.path.join(a.out, f"{a.name}.md")
        atomic_write_text(md, open(md).read() + "\n" + fits)
    S.plot(table, os.path.join(a.out, f"{a.name}.png"))
    print(table.to_markdown())
    print(fits)
    return 0


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    sys.exit(main())
