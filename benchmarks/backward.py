"""Forward and implicit backward of the banded solver's differentiable outputs, against one torch.sort.

    python benchmarks/backward.py                          # n = 2^14 .. 2^20, one thread
    python benchmarks/backward.py --sizes 16384 65536 --repeats 3 --out benchmarks/results
    python benchmarks/backward.py --dtype float32          # float32 inputs (solved in float64)

For each n: ``sinkhorn_banded`` (rank gamma = 1, source scores standard normal,
target scores shifted by one standard deviation) followed by ``transport_cost()``,
and followed by the lifted expectation ``<P, |x_i - y_j|^2>`` of 3-d points; both
backpropagated into the scores (and the points). Times are the best of
``--repeats``; the ratio backward / forward is the figure the solver is held to
(no slower than the forward, memory O(nnz)). Writes ``backward.md`` and
``backward.csv`` under ``--out`` when given.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time

import torch

from glass_pyg import losses
from glass_pyg.experiments.run_dir import atomic_write_text
from glass_pyg.ot import sinkhorn_banded


def measure(n: int, kind: str, repeats: int, seed: int = 0,
            dtype: torch.dtype = torch.float64) -> tuple[float, float]:
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    t = (torch.randn(n, generator=g, dtype=torch.float64) + 1.0).to(dtype)
    xs = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    xt = torch.randn(n, 3, generator=g, dtype=torch.float64).to(dtype)
    best = None
    for _ in range(repeats):
        x, p = s.clone().requires_grad_(True), xs.clone().requires_grad_(True)
        t0 = time.perf_counter()
        plan = sinkhorn_banded(x, t, gamma=1.0, temperature="rank")
        out = plan.transport_cost() if kind == "cost" else plan.expectation(losses.squared_euclidean(p, xt))
        t1 = time.perf_counter()
        out.backward()
        t2 = time.perf_counter()
        if best is None or t2 - t0 < sum(best):
            best = (t1 - t0, t2 - t1)
    return best


def sort_time(n: int, repeats: int) -> float:
    x = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    times = []
    for _ in range(max(repeats, 3)):
        t0 = time.perf_counter()
        torch.sort(x)
        times.append(time.perf_counter() - t0)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2 ** k for k in (14, 16, 18, 20)])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                    help="dtype of the scores and points (the solve runs in float64 either way)")
    ap.add_argument("--out", help="folder for backward.md and backward.csv")
    args = ap.parse_args(argv)
    if min(args.sizes) < 1 or args.repeats < 1 or args.threads < 1:
        ap.error("--sizes, --repeats and --threads must be positive")
    torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        dtype = getattr(torch, args.dtype)
        (fc, bc), (fl, bl) = (measure(n, kind, args.repeats, dtype=dtype) for kind in ("cost", "lifted"))
        rows.append({"n": n, "sort_s": sort_time(n, args.repeats), "cost_forward_s": fc, "cost_backward_s": bc,
                     "cost_ratio": bc / fc, "lifted_forward_s": fl, "lifted_backward_s": bl, "lifted_ratio": bl / fl})
        print(f"  n={n}: cost {fc:.3g}+{bc:.3g} s, lifted {fl:.3g}+{bl:.3g} s", flush=True)
    head = ("| n | torch.sort | cost: forward | backward | backward / forward | lifted: forward | backward "
            "| backward / forward |\n|---|---|---|---|---|---|---|---|\n")
    md = head + "".join(
        f"| {r['n']} | {r['sort_s'] * 1e3:.3g} ms | {r['cost_forward_s']:.3g} s | {r['cost_backward_s']:.3g} s "
        f"| {r['cost_ratio']:.2f} | {r['lifted_forward_s']:.3g} s | {r['lifted_backward_s']:.3g} s "
        f"| {r['lifted_ratio']:.2f} |\n" for r in rows)
    print(md)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
        cmd = " ".join(["python benchmarks/backward.py", *(sys.argv[1:] if argv is None else argv)])
        for name, text in (("backward.md", f"# Forward and implicit backward\n\n`{cmd}`\n\n{md}"),
                           ("backward.csv", buf.getvalue())):
            atomic_write_text(os.path.join(args.out, name), text)
        print(f"wrote {args.out}/backward.md and backward.csv")
    return 0


if __name__ == "__main__":
    from glass_pyg.experiments.memory import retain_freed_memory
    retain_freed_memory()  # as the glass-pyg command does: freed band-sized buffers are reused
    raise SystemExit(main())
