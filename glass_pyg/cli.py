"""The ``glass-pyg`` command."""
from __future__ import annotations

import argparse
import sys


def _bench_sinkhorn(args: argparse.Namespace) -> int:
    from .experiments import bench_sinkhorn as B

    sizes = args.sizes if args.sizes else [args.n]
    cfg = B.BenchConfig(sizes=sizes, gamma=args.gamma, rank_gamma=args.rank_gamma, band_eps=args.band_eps,
                        max_iter=args.max_iter, tol=args.tol, repeats=args.repeats,
                        dense_max_n=args.dense_max_n, pot_max_n=args.pot_max_n, seed=args.seed,
                        absolute_max_n=args.absolute_max_n)
    rows = B.run(cfg, progress=lambda r: print(f"  n={r.n} {r.method} {r.temperature}: {r.median_s:.4g}s",
                                               file=sys.stderr, flush=True))
    print(B.to_markdown(rows))
    print()
    print(B.summary(rows))
    if args.out:
        md, cs = B.write(rows, args.out)
        print(f"\nwrote {md} and {cs}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="glass-pyg", description="GLASS alignment layer for PyTorch Geometric")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench-sinkhorn", help="benchmark the 1-D entropic OT solvers")
    b.add_argument("--n", type=int, default=2048, help="problem size (when --sizes is not given)")
    b.add_argument("--sizes", type=int, nargs="+", help="several problem sizes")
    b.add_argument("--gamma", type=float, default=0.05, help="absolute gamma (squared score units)")
    b.add_argument("--rank_gamma", "--rank-gamma", type=float, default=1.0,
                   help="gamma at rank temperature (in squared mean spacings)")
    b.add_argument("--band_eps", "--band-eps", type=float, default=1e-6)
    b.add_argument("--max_iter", "--max-iter", type=int, default=200)
    b.add_argument("--tol", type=float, default=1e-6)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--dense_max_n", "--dense-max-n", type=int, default=2048)
    b.add_argument("--pot_max_n", "--pot-max-n", type=int, default=2048)
    b.add_argument("--absolute_max_n", "--absolute-max-n", type=int, default=16384,
                   help="largest n solved at absolute gamma (its band grows like n)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", help="folder for sinkhorn.md and sinkhorn.csv")
    b.set_defaults(func=_bench_sinkhorn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
