"""Graph matching quality and time: glass-pyg against GRAMPA, Umeyama, degree profile, FAQ, entropic GW.

    python benchmarks/graph_matching.py                      # the full grid (hours on 2 cores)
    python benchmarks/graph_matching.py --sizes 1000 --seeds 0 1 2 --budget 120
    python benchmarks/graph_matching.py --quick              # n = 200, two rewiring levels, one seed

Writes benchmarks/results/graph_matching.{csv,md} (every run, and median [min, max] over seeds).
"""
from __future__ import annotations

import argparse
import sys

from harness import graph as G
from harness.common import machine, render, rerender, settings_line


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+")
    p.add_argument("--rewire", type=float, nargs="+")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--families", nargs="+", choices=["sbm", "sparse"])
    p.add_argument("--methods", nargs="+", choices=G.METHODS)
    p.add_argument("--budget", type=float, default=300.0, help="seconds per method and instance")
    p.add_argument("--threads", type=int, help="torch threads in each worker")
    p.add_argument("--steps", type=int, help="glass training steps")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from-csv", help="re-render the Markdown and the plot from a CSV of an earlier run")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default="graph_matching")
    a = p.parse_args(argv)
    if a.from_csv:
        print(rerender(a.from_csv, a.out, a.name, G.KEYS, G.METRICS, G.headline, G.plot))
        return 0
    cfg = G.GraphBenchConfig(budget_s=a.budget, threads=a.threads)
    if a.quick:
        cfg.sizes, cfg.rewire, cfg.seeds = [200], [0.0, 0.05], [0]
    for key in ("sizes", "rewire", "seeds", "families", "methods"):
        if getattr(a, key):
            setattr(cfg, key, getattr(a, key))
    if a.steps is not None:
        cfg.glass.steps = a.steps
    cmd = f"python benchmarks/graph_matching.py {' '.join(argv or sys.argv[1:])}"
    header = (f"# Graph matching on SBM pairs\n\n`{cmd}`\n\nMachine: {machine()}. "
              f"{settings_line(cfg.glass, cfg.budget_s, cfg.threads)}. Cells: median [min, max] over seeds; "
              "acc_lifted = the lifted decoding (a matching on the lifted cost inside the plan's support: greedy "
              "with decode_assignment=greedy, else exact); acc_refined = the answer of glass-pyg's pipeline "
              "(glass_pyg.match_graphs: refinement from it, and the consensus stage where that does not take hold). "
              "glass: the head as initialised; glass_trained: after `steps` training steps (the ablation).")
    table = G.run(cfg, progress=lambda s: print(s, flush=True),
                  on_row=lambda t: render(t, a.out, a.name, header, G.headline))
    print(render(table, a.out, a.name, header, G.headline, G.plot))
    print(f"wrote {a.out}/{a.name}.csv, .md and .png")
    return 0


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    sys.exit(main())
